"""POST /prompt: a ComfyUI prompt becomes one of our jobs, whose id is the prompt id (the client's, when it
names one, as current ComfyUI allows: a canonical UUID, answered back as given)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from comfy_saas.errors import Conflict, InvalidInput
from comfy_saas.jobs import operations
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.request import json_object
from comfy_saas.jobs.services import Services
from comfy_saas.native import catalogue, records, uploads

MAX_CLIENT_ID = 256
FOR_COMFYUI_ONLY = ("api_key_comfy_org",)  # extra_data ComfyUI reads that history never shows (as ComfyUI)


class PromptRefused(InvalidInput):
    """A prompt refused before it became a job, with the error type ComfyUI gives (`kind`)."""

    def __init__(self, message: str, kind: str, field: str) -> None:
        super().__init__(message, field=field)
        self.kind = kind


def prompt_id_of(body: dict[str, Any]) -> str:
    """The client's prompt_id (a canonical UUID) or a new one."""
    given = body.get("prompt_id")
    if given is None:
        return str(uuid.uuid4())
    try:
        ok = isinstance(given, str) and str(uuid.UUID(given)) == given
    except ValueError:
        ok = False
    if not ok:
        raise PromptRefused("prompt_id must be a valid UUID", "invalid_prompt_id", "prompt_id")
    return given


def client_id_of(body: dict[str, Any]) -> str | None:
    """The top-level client_id, else extra_data's (ComfyUI routes events by the latter, which the former sets)."""
    extra = body.get("extra_data")
    client_id = body.get("client_id", extra.get("client_id") if isinstance(extra, dict) else None)
    if client_id is None or client_id == "":
        return None
    if not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID or not client_id.isprintable():
        raise InvalidInput(f"client_id must be text of at most {MAX_CLIENT_ID} printable characters",
                           field="client_id")
    return client_id


def for_comfyui(body: dict[str, Any]) -> dict[str, Any] | None:
    """What of extra_data ComfyUI itself reads with the prompt: extra_pnginfo (SaveImage embeds the editor's
    workflow in the PNG) and a partner-node key; the worker hands it over, nothing shows the key again."""
    extra = body.get("extra_data")
    if not isinstance(extra, dict):
        return None
    if not isinstance(extra.get("api_key_comfy_org", ""), str):
        raise InvalidInput("extra_data.api_key_comfy_org: must be a string", field="extra_data.api_key_comfy_org")
    picked = {k: extra[k] for k in ("extra_pnginfo", *FOR_COMFYUI_ONLY) if k in extra}
    return picked or None


def extra_of(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """The extra_data to keep for /history (extra_pnginfo and the like), at most `limit` bytes as JSON; the
    client_id is kept on the record itself."""
    import json

    extra = body.get("extra_data")
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise InvalidInput("extra_data must be a JSON object", field="extra_data")
    kept = {k: v for k, v in extra.items() if k not in ("client_id", *FOR_COMFYUI_ONLY)}
    if kept and len(json.dumps(kept, separators=(",", ":"))) > limit:
        raise InvalidInput(f"extra_data is larger than {limit} bytes as JSON", field="extra_data")
    return kept


def pool_of(body: dict[str, Any], prefix_pool: str | None) -> str | None:
    """The pool: the /p/<pool>/ prefix, else extra_data.pool; None for the key's default."""
    extra = body.get("extra_data")
    chosen = prefix_pool or (extra.get("pool") if isinstance(extra, dict) else None)
    if chosen is not None and not isinstance(chosen, str):
        raise InvalidInput("extra_data.pool must be a pool name", field="extra_data.pool")
    return chosen


def check_prompt(svc: Services, prompt: Any, pool: str | None) -> dict[str, Any]:
    """ComfyUI's first refusals: no prompt, and a prompt without an output node (as far as the catalogue says)."""
    if not isinstance(prompt, dict):
        raise PromptRefused("No prompt provided", "no_prompt", "prompt")
    nodes = operations.catalogue(svc, pool, needed=False)
    if not prompt or (nodes is not None and all(isinstance(n, dict) and n.get("class_type") in nodes for n in
                                                prompt.values()) and not catalogue.output_nodes(prompt, nodes)):
        raise PromptRefused("Prompt has no outputs", "prompt_no_outputs", "prompt")
    return prompt


def submit_prompt(svc: Services, caller: Caller, owner: str, raw: bytes | bytearray,
                  prefix_pool: str | None) -> dict[str, Any]:
    """Queue a prompt as a job; ComfyUI's answer {prompt_id, number, node_errors}."""
    body = json_object(raw, svc.settings.limits)
    if "prompt" not in body:
        raise PromptRefused("No prompt provided", "no_prompt", "prompt")
    prompt_id, client_id, pool = prompt_id_of(body), client_id_of(body), pool_of(body, prefix_pool)
    extra = extra_of(body, svc.settings.limits.max_workflow_bytes)
    workflow, media = uploads.stage(svc, owner, check_prompt(svc, body["prompt"], pool))
    created_ms = int(time.time() * 1000)
    if not records.claim(svc, prompt_id, owner, client_id, created_ms):
        return _repeat(svc, owner, prompt_id)  # only the claim's winner submits (and may release it)
    request = {"workflow": workflow, "include_previews": True, **({"pool": pool} if pool else {})}
    try:
        operations.submit(svc, caller, request, staged=media, job_id=prompt_id, extra_data=for_comfyui(body))
    except BaseException:
        records.release(svc, prompt_id)
        raise
    number = records.listed(svc, prompt_id, owner, client_id, created_ms, extra)
    return {"prompt_id": prompt_id, "number": number, "node_errors": {}}


def _repeat(svc: Services, owner: str, prompt_id: str) -> dict[str, Any]:
    """A prompt_id already claimed: the same owner's repeat answers as the first time, or 409 while the first
    submission is still under way (a second submit of the same job would race it); anyone else's is refused."""
    rec = records.record(svc, prompt_id) or {}
    if rec.get("owner") != owner:
        raise PromptRefused("prompt_id is already in use; omit it to let the server choose one",
                            "invalid_prompt_id", "prompt_id")
    if not svc.store.exists(prompt_id) or not rec.get("number"):
        raise Conflict("prompt_id: a submission with this prompt_id is still under way; retry in a moment")
    return {"prompt_id": prompt_id, "number": int(rec.get("number") or 0), "node_errors": {}}
