"""The operations the API offers, as plain functions over plain data, and the one error-to-HTTP map.

The local HTTP server, Modal's web endpoints and Modal's remote-callable functions all call these,
so validation, authorization and the job's public shape are the same everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import logs
import preflight
import safe_fetch
from errors import (
    BackendError,
    BodyTooLarge,
    ComfySaasError,
    Conflict,
    InvalidInput,
    MalformedBody,
    MediaError,
    NotFound,
    Overloaded,
    PreflightFailed,
    Unauthorized,
)
from models import Job, JobRequest, Status, parse_submission
from object_store import ObjectStore
from settings import Settings
from storage import JobStore

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass
class Services:
    """What an operation needs: the job store, object storage, settings, and how to wake a worker pool."""

    store: JobStore
    objects: ObjectStore
    settings: Settings
    wake: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Caller:
    """Who is asking. A key bound to a user sees only that user's jobs; an unbound key sees all."""

    key_id: str
    user_id: str | None = None


def parse_api_keys(spec: str) -> list[tuple[str, str | None]]:
    """'k1, k2:alice' -> [('k1', None), ('k2', 'alice')]."""
    keys = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            key, _, user = part.partition(":")
            keys.append((key, user or None))
    return keys


def authenticate(settings: Settings, authorization: str | None) -> Caller:
    """The caller for an `Authorization: Bearer <key>` header; Unauthorized otherwise."""
    keys = parse_api_keys(settings.api_keys)
    if not keys and not settings.require_auth:
        return Caller(key_id="anonymous")
    if not keys:
        raise Unauthorized("no API keys are configured on this server (set COMFY_API_KEYS)")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send an Authorization: Bearer <API key> header")
    match = None
    for key, user in keys:  # compare against every key, so timing says nothing about which one matched
        if hmac.compare_digest(key.encode(), presented.strip().encode()):
            match = (key, user)
    if match is None:
        raise Unauthorized("the API key is not valid")
    return Caller(key_id=hashlib.sha256(match[0].encode()).hexdigest()[:12], user_id=match[1])


def job_view(svc: Services, job: Job) -> dict[str, Any]:
    """The job as the API returns it, with freshly presigned output URLs and its webhook deliveries."""
    body = job.public()
    for out in body["outputs"]:
        out["url"] = svc.objects.url(out["key"])
    if job.webhook_url and job.terminal:
        delivery = svc.store.webhook(job.id)
        if delivery is not None:
            body["webhook"] = {k: delivery[k] for k in ("event", "state", "attempts", "next_at")}
    return body


def preflight_check(svc: Services, request: JobRequest) -> None:
    """Refuse, before anything is queued, a workflow the deployed ComfyUI would reject."""
    schema = svc.store.object_info(max_age_s=60.0)
    if schema is None:
        return  # no capture yet: ComfyUI validates at run time
    from workflow import apply_overrides

    problems = preflight.validate(apply_overrides(request.workflow, [o.model_dump() for o in request.overrides]),
                                  schema)
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
    request = parse_submission(body, svc.settings.limits)
    check_urls(svc, request)
    preflight_check(svc, request)
    if caller.user_id is not None:
        request = request.model_copy(update={"user_id": caller.user_id})
    job, created = svc.store.submit(request)
    logs.event(log, "job.submitted" if created else "job.submit_repeated", job_id=job.id, phase="submit",
               pool=job.pool)
    if created and svc.wake is not None:
        svc.wake(job.pool)
    return job_view(svc, job), created


def remote_submit(svc: Services, body: dict[str, Any], user_id: str | None = None) -> dict[str, Any]:
    """Submit for another Modal app: same validation as HTTP, user_id in place of an API key."""
    view, _ = submit_job(svc, Caller(key_id="modal", user_id=user_id), body)
    return view


def _visible_job(svc: Services, caller: Caller, job_id: str) -> Job:
    if not _JOB_ID.match(job_id or ""):
        raise NotFound(f"no job {job_id!r}")
    return svc.store.require(job_id, caller.user_id)


def get_job(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    return job_view(svc, _visible_job(svc, caller, job_id))


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
    job = _visible_job(svc, caller, job_id)
    cancelled = svc.store.request_cancel(job.id, caller.user_id)
    if cancelled.terminal and not job.terminal and cancelled.webhook_url:
        _in_background(_first_webhook_attempt, svc, cancelled.id)
    return job_view(svc, cancelled)


def _first_webhook_attempt(svc: Services, job_id: str) -> None:
    import webhooks

    webhooks.deliver_now(svc, job_id, owner="api")


def _in_background(fn: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


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


# --- the one place errors become HTTP responses --------------------------------------------------

_STATUS = [(MalformedBody, 400), (BodyTooLarge, 413), (InvalidInput, 422), (Unauthorized, 401), (NotFound, 404),
           (Conflict, 409), (Overloaded, 429), (BackendError, 503), (ComfySaasError, 500)]


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; the body is always {"error": {type, message, field?}}."""
    if not isinstance(exc, ComfySaasError):
        return 500, {"error": {"type": "internal_error", "message": "internal error"}}, {}
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return status, {"error": exc.to_dict()}, headers
