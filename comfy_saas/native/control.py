"""Stopping prompts: POST /interrupt, POST /queue {delete, clear} and POST /api/jobs/{id}/cancel, each a cancel of
our job (a queued one at once, a running one within about a second), and only ever the caller's own."""

from __future__ import annotations

from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import AlreadyFinished, InvalidInput
from comfy_saas.jobs import operations
from comfy_saas.jobs.model import Status
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import MAX_PAGE
from comfy_saas.native import records
from comfy_saas.native.history import HistoryCache, unsettled
from comfy_saas.native.records import Prompt


def _cancel(svc: Services, caller: Caller, prompts: list[Prompt]) -> int:
    """Cancel these prompts' jobs (together); how many were still going."""
    def one(p: Prompt) -> bool:
        try:
            operations.cancel_job(svc, caller, p.id)
            return True
        except AlreadyFinished:
            return False
    return sum(run_all([lambda p=p: one(p) for p in prompts]))


def _ids(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_PAGE or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{field} must be a list of at most {MAX_PAGE} prompt ids", field=field)
    return [v for v in value if len(v) <= 64]


def interrupt(svc: Services, cache: HistoryCache, caller: Caller, owner: str, body: dict[str, Any]) -> int:
    """Stop the caller's running prompt (the one named by prompt_id, else every running one of theirs)."""
    named = body.get("prompt_id")
    if named is not None:
        prompts = records.load(svc, owner, _ids([named], "prompt_id"))
    else:
        prompts = unsettled(svc, cache, owner, MAX_PAGE)[1]
    return _cancel(svc, caller, [p for p in prompts if p.job is not None and p.job.status is Status.RUNNING])


def edit_queue(svc: Services, cache: HistoryCache, caller: Caller, owner: str, body: dict[str, Any]) -> int:
    """POST /queue: {"delete": [ids]} cancels those of the caller's that are still queued; {"clear": true} all of
    their queued prompts. Running ones are left alone, as ComfyUI leaves them."""
    prompts: list[Prompt] = []
    if body.get("clear"):
        prompts = unsettled(svc, cache, owner, MAX_PAGE)[1]
    elif "delete" in body:
        prompts = records.load(svc, owner, _ids(body["delete"], "delete"))
    return _cancel(svc, caller, [p for p in prompts if p.job is not None and p.job.status is Status.QUEUED])


def cancel(svc: Services, caller: Caller, owner: str, prompt_id: str) -> bool:
    """POST /api/jobs/{id}/cancel: whether a cancel was sent (False for finished or unknown ids)."""
    prompts = records.load(svc, owner, _ids([prompt_id], "job_id"))
    return _cancel(svc, caller, [p for p in prompts if p.job is not None and not p.job.terminal]) > 0


def cancel_many(svc: Services, caller: Caller, owner: str, body: dict[str, Any]) -> bool:
    """POST /api/jobs/cancel {"job_ids": [...]}: whether any of the caller's was still going."""
    prompts = records.load(svc, owner, _ids(body.get("job_ids"), "job_ids"))
    return _cancel(svc, caller, [p for p in prompts if p.job is not None and not p.job.terminal]) > 0
