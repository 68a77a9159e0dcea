"""The operations the API offers, as plain functions over plain data.

The local HTTP server, Modal's web endpoints and Modal's remote-callable functions all call these, so
validation, visibility and the job's public shape are the same everywhere. Status changes go through
the lifecycle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from comfy_saas import inputs, logs
from comfy_saas.backends import safe_fetch
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import (
    AlreadyFinished,
    BodyTooLarge,
    CatalogueUnavailable,
    InvalidInput,
    NotFound,
    PreflightFailed,
)
from comfy_saas.jobs import catalogues, keys, payloads
from comfy_saas.jobs.model import Job, Status, new_job_id
from comfy_saas.jobs.model_cache import ModelCache
from comfy_saas.jobs.prepare import Prepared, prepare
from comfy_saas.jobs.request import JobRequest, MediaInput, parse_submission
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import MAX_PAGE
from comfy_saas.jobs.views import job_view
from comfy_saas.workflows import preflight
from comfy_saas.workflows.edits import apply_overrides
from comfy_saas.workflows.ui_graph import is_ui_format

log = logging.getLogger(__name__)
MAX_CURSOR = 10**18 - 1


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


def preflight_check(request: JobRequest, schema: dict[str, Any] | None, workflow: dict[str, Any] | None = None,
                    overrides: list[dict[str, Any]] | None = None) -> None:
    """Refuse, before anything is queued, a workflow the deployed ComfyUI (its node catalogue, `schema`) would
    reject."""
    if schema is None:
        return  # no capture yet: ComfyUI validates at run time
    if overrides is None:
        overrides = [o.model_dump() for o in request.overrides]
    workflow = apply_overrides(request.workflow if workflow is None else workflow, overrides)
    problems = preflight.validate(workflow, schema, {m.name for m in request.models if m.name})
    if problems:
        summary = "; ".join(f"node {p['node_id']} ({p['class_type']}): {p['message']}" for p in problems[:5])
        raise PreflightFailed(f"workflow: {len(problems)} problem(s): {summary}", problems)


def catalogue(svc: Services, pool: str | None, needed: bool, fresh: bool = False) -> dict[str, Any] | None:
    """The pool's node catalogue (as this process last read it, unless `fresh`). When `needed` and no worker
    has published one yet, wake the pool (its worker publishes on start) and refuse with
    CatalogueUnavailable, which carries a Retry-After."""
    pool = pool or svc.settings.default_pool
    if pool not in (table := svc.settings.pool_table()):
        raise InvalidInput(f"pool: no pool {pool!r} here; pools: {', '.join(table)}", field="pool")
    nodes = catalogues.load(svc, pool, fresh=fresh)
    if nodes is None and needed:
        wake(svc, pool)
        raise CatalogueUnavailable("no worker has published this deployment's node catalogue yet, which converting "
                                   "a UI-format workflow needs; a worker is starting, retry shortly")
    return nodes


def check_urls(svc: Services, request: JobRequest) -> None:
    """Refuse media, model and webhook URLs whose host resolves into our own network (SSRF), naming the
    field. The hosts are resolved concurrently under one deadline, never one after another on the request."""
    allowlist = safe_fetch.parse_allowlist(svc.settings.private_url_allowlist)
    targets = [("webhook_url", request.webhook_url)] + [(f"media[{i}].url", m.url) for i, m in
                                                          enumerate(request.media)]
    targets += [(f"models[{i}].url", m.url) for i, m in enumerate(request.models)]
    targets = [(field, url) for field, url in targets if url]
    verdicts = safe_fetch.check_public_urls([url for _, url in targets], allowlist, svc.settings.url_check_timeout_s)
    for (field, _), why in zip(targets, verdicts, strict=True):
        if why is not None:
            raise InvalidInput(f"{field}: {why}", field=field)


def submit_job(svc: Services, caller: Caller, body: bytes | bytearray | str | dict[str, Any],
               recorded: dict[str, Any] | None = None, staged: list[MediaInput] | None = None,
               job_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """Validate and enqueue; (job view, created). A user-bound key always submits as its user. `recorded` are
    fields for the job record from the caller (the template it came from, seeds it drew); `staged`, media a
    surface resolved for this caller (MediaInput.stored); `job_id`, an id the caller made sure is unused (a
    surface whose clients name their jobs)."""
    job, created = submit(svc, caller, body, recorded, staged, job_id)
    return job_view(svc, job), created


def submit(svc: Services, caller: Caller, body: bytes | bytearray | str | dict[str, Any],
           recorded: dict[str, Any] | None = None, staged: list[MediaInput] | None = None,
           job_id: str | None = None, extra_data: dict[str, Any] | None = None) -> tuple[Job, bool]:
    """submit_job's job itself (for a surface that renders it its own way). `extra_data`: ComfyUI's per-prompt
    extra data, kept in the payload only (it may hold secrets) and outside the idempotency comparison."""
    if isinstance(body, bytes | bytearray | str) and len(body) > svc.settings.limits.max_body_bytes:
        raise BodyTooLarge(f"the body is larger than {svc.settings.limits.max_body_bytes} bytes", field="body")
    request = route_to_pool(svc, caller, parse_submission(body, svc.settings.limits).with_staged(staged or []))
    check_webhook_secret(svc, request)
    if caller.user_id is not None:
        request = request.model_copy(update={"user_id": caller.user_id})
    check_urls(svc, request)
    prepared = _prepare_checked(svc, request, recorded)
    job, created = _store_job(svc, prepared, job_id, extra_data)
    logs.event(log, "job.submitted" if created else "job.submit_repeated", job_id=job.id, phase="submit",
               pool=job.pool)
    if created:
        wake(svc, job.pool)
    return job, created


def _prepare_checked(svc: Services, request: JobRequest, recorded: dict[str, Any] | None) -> Prepared:
    """The request converted and checked against its pool's node catalogue. A refusal by the catalogue this
    process kept is checked again against a fresh read: a worker with new nodes may have started since."""
    needed = is_ui_format(request.workflow)
    nodes = catalogue(svc, request.pool, needed)
    try:
        return _checked(request, nodes, svc, recorded)
    except (PreflightFailed, InvalidInput):
        fresh = catalogue(svc, request.pool, needed, fresh=True) if nodes is not None else None
        if fresh is None or fresh == nodes:
            raise
    return _checked(request, fresh, svc, recorded)


def _checked(request: JobRequest, nodes: dict[str, Any] | None, svc: Services,
             recorded: dict[str, Any] | None) -> Prepared:
    prepared = prepare(request, nodes, svc.settings.limits, recorded)
    preflight_check(request, nodes, prepared.workflow, prepared.overrides)
    return prepared


def _store_job(svc: Services, prepared: Prepared, job_id: str | None = None,
               extra_data: dict[str, Any] | None = None) -> tuple[Job, bool]:
    """Upload the job's large parts, then create it; the uploads are removed again if it is not made."""
    job_id, now = job_id or new_job_id(), svc.store.clock()
    request = prepared.request
    payload = payloads.pack(svc.objects, job_id, now, prepared.workflow, prepared.overrides, request.media,
                            [m.model_dump(mode="json") for m in request.models], extra_data)
    try:
        job, created = svc.lifecycle.create(prepared.request, payload, job_id, now)
    except BaseException:
        _drop_uploads(svc, job_id, now)
        raise
    if job.id != job_id:  # an idempotent repeat: the original has its own copy
        _drop_uploads(svc, job_id, now)
    return job, created


def _drop_uploads(svc: Services, job_id: str, now: datetime) -> None:
    try:
        svc.objects.delete_prefix(keys.object_prefix(job_id, now))
    except Exception as exc:  # the day's prefix deletion removes them later anyway
        logs.event(log, "job.uploads_left", logging.WARNING, job_id=job_id, error=str(exc))


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
    if not inputs.matches(inputs.JOB_ID, job_id):
        raise NotFound("no such job")  # never echoes what it was given
    return svc.store.require(job_id, caller.user_id)


def get_job(svc: Services, caller: Caller, job_id: str, include_workflow: bool = False) -> dict[str, Any]:
    """The job; with include_workflow also the API-format workflow it ran (overrides and seeds applied), which
    resubmitted as it is reproduces the job."""
    view = job_view(svc, visible_job(svc, caller, job_id))
    if include_workflow:
        view["workflow"] = job_workflow(svc, job_id)
    return view


def job_workflow(svc: Services, job_id: str) -> dict[str, Any]:
    """The API-format workflow a job runs, overrides and drawn seeds applied (call after a visibility check)."""
    graph = payloads.graph(svc.objects, svc.store.payload(job_id))
    return apply_overrides(graph["workflow"], graph.get("overrides", []))


def list_jobs(svc: Services, caller: Caller, *, status: str | None = None, cursor: str | int | None = None,
              limit: int | str | None = 20, user_id: str | None = None) -> dict[str, Any]:
    """A page of jobs, newest first. A user-bound key lists its own; others may filter by user_id.
    A cursor beyond the newest job is not one this API handed out: an empty last page."""
    jobs, next_cursor = list_page(svc, caller, status=status, cursor=cursor, limit=limit, user_id=user_id)
    return {"jobs": [job_view(svc, j) for j in jobs], "next_cursor": next_cursor}


def list_page(svc: Services, caller: Caller, *, status: str | None = None, cursor: str | int | None = None,
              limit: int | str | None = 20, user_id: str | None = None) -> tuple[list[Job], str | None]:
    """list_jobs' page as the jobs themselves (for a surface that renders them its own way), and its cursor."""
    try:
        wanted = Status(status) if status else None
    except ValueError:
        raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}", field="status") from None
    size = inputs.whole_number(_text(limit), "limit", 1, MAX_PAGE, default=20)
    start = None if cursor in (None, "") else inputs.whole_number(_text(cursor), "cursor", 0, MAX_CURSOR)
    if user_id is not None and not inputs.matches(inputs.IDENTIFIER, user_id):
        raise InvalidInput("user_id must be 1-128 letters, digits and _ . : @ -", field="user_id")
    owner = caller.user_id or user_id
    if start is None:
        page = svc.store.list_jobs(user_id=owner, status=wanted, limit=size)
    else:  # the head is read alongside the page, so checking the cursor costs no extra round trip
        head, page = run_all([lambda: svc.store.index.head(keys.scope(owner)),
                              lambda: svc.store.list_jobs(user_id=owner, status=wanted, cursor=str(start), limit=size)])
        if start > head:
            return [], None
    return page.jobs, page.next_cursor


def _text(value: Any) -> str | None:
    """A number from a query string or a remote caller, as text for the one strict parser."""
    if value is None or isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "invalid"


def cancel_job(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    """Ask for cancellation; a queued job is cancelled at once, a running one within about a second.
    A job that already finished cannot be cancelled: Conflict naming its status."""
    job = visible_job(svc, caller, job_id)
    if job.terminal:
        raise AlreadyFinished(f"the job is already {job.status.value}; only queued or running jobs can be "
                              "cancelled", job.status.value)
    return job_view(svc, svc.lifecycle.cancel(job))


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


def _operators_only(caller: Caller) -> None:
    if caller.user_id is not None:
        raise NotFound("no such page")  # as for /metrics: a key bound to a user does not see it exists


def list_models(svc: Services, caller: Caller) -> dict[str, Any]:
    """The cached model files, most recently used first (keys not bound to a user only)."""
    _operators_only(caller)
    return {"models": ModelCache(svc).listing()}


def delete_model(svc: Services, caller: Caller, sha256: str) -> dict[str, Any]:
    """Remove one cached model file; 409 while a running job uses it (keys not bound to a user only)."""
    _operators_only(caller)
    return ModelCache(svc).delete(sha256 or "")
