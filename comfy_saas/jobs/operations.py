"""The operations the API offers, as plain functions over plain data.

The local HTTP server, Modal's web endpoints and Modal's remote-callable functions all call these, so
validation, visibility and the job's public shape are the same everywhere. Status changes go through
the lifecycle.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from comfy_saas import logs
from comfy_saas.backends import safe_fetch
from comfy_saas.errors import BodyTooLarge, InvalidInput, MediaError, NotFound, PreflightFailed
from comfy_saas.jobs.model import Job, Status
from comfy_saas.jobs.request import JobRequest, parse_submission
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.views import job_view
from comfy_saas.workflows import preflight
from comfy_saas.workflows.edits import apply_overrides

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")


@dataclass(frozen=True)
class Caller:
    """Who is asking. A key bound to a user sees only that user's jobs; an unbound key sees all."""

    key_id: str
    user_id: str | None = None
    pools: tuple[str, ...] | None = None  # the pools this key may submit to; None: every pool


def route_to_pool(svc: Services, caller: Caller, request: JobRequest) -> JobRequest:
    """The request with its pool and timeout settled: a pool this deployment serves (422 naming them) that
    this key may use (a limited key's first pool is its default), and a timeout the pool's workers can honour
    (422 above the pool's cap; a job naming none gets the default, capped)."""
    table = svc.settings.pool_table()
    pool = request.pool or (caller.pools[0] if caller.pools else svc.settings.default_pool)
    if pool not in table:
        raise InvalidInput(f"pool: no pool {pool!r} here; pools: {', '.join(table)}", field="pool")
    if caller.pools is not None and pool not in caller.pools:
        raise InvalidInput(f"pool: this API key may use pool(s) {', '.join(caller.pools)} only", field="pool")
    cap, timeout = table[pool].max_timeout_s, request.timeout_s
    if cap is not None and timeout is not None and timeout > cap:
        raise InvalidInput(f"timeout_s: pool {pool!r} runs jobs of at most {cap} seconds (its workers' Modal "
                           f"timeout less the time a drain keeps back)", field="timeout_s")
    if cap is not None and timeout is None and svc.settings.job_timeout_s > cap:
        timeout = cap
    return request.model_copy(update={"pool": pool, "timeout_s": timeout})


def check_webhook_secret(svc: Services, request: JobRequest) -> None:
    """A deployment without a webhook signing secret refuses webhook_url up front rather than fail to sign."""
    deployed = svc.settings.storage_backend != "local"  # locally a secret is derived per data dir
    if request.webhook_url and deployed and not svc.settings.webhook_secret:
        raise InvalidInput("webhook_url: this deployment has no webhook signing secret; set COMFY_WEBHOOK_SECRET "
                           "(an optional key of the comfy-saas-api Secret) to use webhooks", field="webhook_url")


def preflight_check(svc: Services, request: JobRequest) -> None:
    """Refuse, before anything is queued, a workflow the deployed ComfyUI would reject."""
    schema = svc.store.object_info(request.pool)
    if schema is None:
        return  # no capture yet: ComfyUI validates at run time
    workflow = apply_overrides(request.workflow, [o.model_dump() for o in request.overrides])
    problems = preflight.validate(workflow, schema)
    if problems:
        summary = "; ".join(f"node {p['node_id']} ({p['class_type']}): {p['message']}" for p in problems[:5])
        raise PreflightFailed(f"workflow: {len(problems)} problem(s): {summary}", problems)


def check_urls(svc: Services, request: JobRequest) -> None:
    """Refuse media and webhook URLs whose host resolves into our own network (SSRF), naming the field."""
    allowlist = safe_fetch.parse_allowlist(svc.settings.private_url_allowlist)
    targets = [("webhook_url", request.webhook_url)] + [(f"media[{i}].url", m.url) for i, m in
                                                          enumerate(request.media)]
    for field, url in targets:
        if url:
            try:
                safe_fetch.check_public_url(url, allowlist)
            except MediaError as exc:
                raise InvalidInput(f"{field}: {exc.message}", field=field) from None


def submit_job(svc: Services, caller: Caller, body: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Validate and enqueue; (job view, created). A user-bound key always submits as its user."""
    if isinstance(body, bytes | str) and len(body) > svc.settings.limits.max_body_bytes:
        raise BodyTooLarge(f"the body is larger than {svc.settings.limits.max_body_bytes} bytes", field="body")
    request = route_to_pool(svc, caller, parse_submission(body, svc.settings.limits))
    check_webhook_secret(svc, request)
    check_urls(svc, request)
    preflight_check(svc, request)
    if caller.user_id is not None:
        request = request.model_copy(update={"user_id": caller.user_id})
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides"})
    job, created = svc.lifecycle.create(request, payload)
    logs.event(log, "job.submitted" if created else "job.submit_repeated", job_id=job.id, phase="submit",
               pool=job.pool)
    if created:
        wake(svc, job.pool)
    return job_view(svc, job), created


def wake(svc: Services, pool: str) -> None:
    """Ask for a worker; a failed wake-up never fails the submission (the sweeper wakes pools too)."""
    if svc.wake is None:
        return
    try:
        svc.wake(pool)
    except Exception as exc:  # the job is stored and queued; the next sweep recovers it
        logs.event(log, "pool.wake_failed", logging.WARNING, pool=pool, error=str(exc))


def visible_job(svc: Services, caller: Caller, job_id: str) -> Job:
    """The job if this caller may see it; NotFound otherwise (never says which)."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise NotFound("no such job")
    return svc.store.require(job_id, caller.user_id)


def get_job(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    return job_view(svc, visible_job(svc, caller, job_id))


def list_jobs(svc: Services, caller: Caller, *, status: str | None = None, cursor: str | None = None,
              limit: int = 20, user_id: str | None = None) -> dict[str, Any]:
    """A page of jobs, newest first. A user-bound key lists its own; others may filter by user_id."""
    try:
        wanted = Status(status) if status else None
    except ValueError:
        raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}", field="status") from None
    page = svc.store.list_jobs(user_id=caller.user_id or user_id, status=wanted, cursor=cursor, limit=limit)
    return {"jobs": [job_view(svc, j) for j in page.jobs], "next_cursor": page.next_cursor}


def cancel_job(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    """Ask for cancellation; a queued job is cancelled at once, a running one within about a second."""
    job = visible_job(svc, caller, job_id)
    return job_view(svc, svc.lifecycle.cancel(job.id, caller.user_id))


def health(svc: Services) -> dict[str, Any]:
    """Whether the store and the queue answer, and how deep the queue is."""
    checks: dict[str, Any] = {}
    try:
        svc.store.get("health-probe")
        checks["store"] = "ok"
    except Exception as exc:  # health reports failures; it never raises them
        checks["store"] = f"error: {exc}"
    try:
        checks["queue_depth"] = svc.store.queue_depth()
        checks["queue"] = "ok"
    except Exception as exc:
        checks["queue"] = f"error: {exc}"
    checks["status"] = "ok" if checks["store"] == "ok" and checks["queue"] == "ok" else "degraded"
    return checks
