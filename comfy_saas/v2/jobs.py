"""The v2 job operations: the contract's request and response shapes around the same operations /v1 calls
(jobs/operations.py). Everything here translates; the job system underneath is the one /v1 uses.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from comfy_saas import inputs
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import (
    AlreadyFinished,
    Conflict,
    IdempotencyInFlight,
    IdempotencyKeyReuse,
    InvalidInput,
    Overloaded,
    WorkflowFormatUi,
)
from comfy_saas.jobs import operations as api
from comfy_saas.jobs.model import Job, Status
from comfy_saas.jobs.request import json_object
from comfy_saas.v2 import idempotency
from comfy_saas.v2.references import resolve_references
from comfy_saas.v2.views import Live, store_status, v2_job
from comfy_saas.workflows.ui_graph import is_ui_format

if TYPE_CHECKING:
    from comfy_saas.jobs.operations import Caller
    from comfy_saas.jobs.services import Services

RESERVED = ("webhook_url", "inputs")  # the contract reserves them for later and refuses them today
KNOWN = {"workflow", "extra_data", "metadata"}
MAX_LABELS = 16
LIST_DEFAULT = 50
QUEUE_TTL_S = 1.0
# (store, pool) -> (when read, queue depth, taken slot): what this process last read of each pool's queue.
_queues: dict[tuple[int, str], tuple[float, int, int]] = {}
_queue_lock = threading.Lock()


def submit(svc: Services, caller: Caller, raw: bytes | bytearray, idempotency_key: str | None,
           root: str = "") -> tuple[dict[str, Any], bool]:
    """POST /api/v2/jobs: (the Job object, replayed). With an Idempotency-Key a repeat of the same request gets
    the job the first one made, for 24 hours (v2/idempotency.py)."""
    body = parse_body(svc, raw)
    key = idempotency.job_key(idempotency_key) if idempotency_key is not None else None
    job, created = _submit(svc, caller, body, key)
    if not created and idempotency.expired(svc, job):
        idempotency.free(svc, job)
        job, created = _submit(svc, caller, body, key)
    if not created:
        return get(svc, caller, job.id, root), True
    return v2_job(svc, job, Live(taken_slot=_recent_taken_slot(svc, job.pool)), root), False


def _recent_taken_slot(svc: Services, pool: str) -> int | None:
    """The pool's taken slot as this process read it within QUEUE_TTL_S, if it did and a job was ever taken
    there (a new job's place then costs no round trip); None otherwise, and the 201 says null."""
    with _queue_lock:
        at, _, taken = _queues.get((id(svc.store), pool), (0.0, 0, 0))
    return taken if taken and time.monotonic() - at < QUEUE_TTL_S else None


def parse_body(svc: Services, raw: bytes | bytearray) -> dict[str, Any]:
    """The request body checked against the contract: an API-format `workflow`, optional `extra_data` (closed)
    and `metadata` labels; UI-format graphs and the reserved fields are refused."""
    body = json_object(raw, svc.settings.limits)
    for name in RESERVED:
        if body.get(name) is not None:
            raise InvalidInput(f"{name}: reserved by Comfy API v2 and not accepted yet", field=name)
    if unknown := sorted(set(body) - KNOWN - set(RESERVED)):
        raise InvalidInput(f"{unknown[0]}: is not a known field (workflow, extra_data, metadata)", field=unknown[0])
    workflow = body.get("workflow")
    if not isinstance(workflow, dict):
        raise InvalidInput("workflow: required, the API-format graph as an object", field="workflow")
    if is_ui_format(workflow):
        raise WorkflowFormatUi("workflow: this is a UI-format graph (nodes/links); export it in API format")
    _check_extra_data(body.get("extra_data"))
    _check_labels(body.get("metadata"))
    return body


def _check_extra_data(extra: Any) -> None:
    if extra is None:
        return
    if not isinstance(extra, dict) or set(extra) - {"api_key_comfy_org"}:
        raise InvalidInput("extra_data: only 'api_key_comfy_org' is accepted", field="extra_data")
    if "api_key_comfy_org" in extra and not isinstance(extra["api_key_comfy_org"], str):
        raise InvalidInput("extra_data.api_key_comfy_org: must be a string", field="extra_data.api_key_comfy_org")


def _check_labels(labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise InvalidInput(f"metadata: an object of at most {MAX_LABELS} string labels", field="metadata")
    for k, v in labels.items():
        if not isinstance(v, str) or not 1 <= len(k) <= 64 or len(v) > 256:
            raise InvalidInput(f"metadata.{inputs.shown(k)}: labels are strings, keys 1-64 and values up to 256 "
                               "characters", field="metadata")


def _submit(svc: Services, caller: Caller, body: dict[str, Any], key: str | None) -> tuple[Job, bool]:
    """The workflow's asset references resolved into media, then the one submit /v1 uses; (job, created). The
    lifecycle's idempotency refusals become the contract's."""
    workflow, staged = resolve_references(svc, caller, body["workflow"])
    submission = {"workflow": workflow, "metadata": body.get("metadata") or {}, "idempotency_key": key}
    try:
        job, created = api.submit(svc, caller, submission, staged=staged, extra_data=body.get("extra_data"))
    except Conflict as exc:
        if key is None or type(exc) is not Conflict:  # the lifecycle's "used with a different request"
            raise
        raise IdempotencyKeyReuse("this Idempotency-Key was already used with a different request") from None
    except Overloaded:
        if key is not None and idempotency.in_flight(svc, caller.user_id, key):
            raise IdempotencyInFlight("the first request with this Idempotency-Key is still being stored; "
                                      "retry shortly", retry_after_s=1) from None
        raise
    return job, created


def get(svc: Services, caller: Caller, job_id: str, root: str = "") -> dict[str, Any]:
    """GET /api/v2/jobs/{id}: the job, its cancel flag read in the same round trip."""
    job, flagged = run_all([lambda: api.visible_job(svc, caller, job_id),
                            lambda: svc.store.cancel_requested(job_id) if _is_id(job_id) else False])
    return render(svc, [(job, bool(flagged))], root)[0]


def render(svc: Services, jobs: list[tuple[Job, bool]], root: str = "") -> list[dict[str, Any]]:
    """Jobs (with their cancel flags) as Job objects, rendered side by side (a first render stores output asset
    pointers); what each pool a queued one waits in looks like comes from pool_queues."""
    queues = pool_queues(svc, {job.pool for job, _ in jobs if job.status is Status.QUEUED})
    return run_all([lambda j=job, f=flag: v2_job(svc, j, Live(f, *queues.get(j.pool, (None, None))), root)
                    for job, flag in jobs])


def pool_queues(svc: Services, pools: set[str]) -> dict[str, tuple[int, int]]:
    """Each pool's (queue depth, taken slot), as this process read them within QUEUE_TTL_S (they only place
    queued jobs, so a poll of one costs no extra round trip most of the time); the stale ones are read
    together, in one round trip."""
    now = time.monotonic()
    with _queue_lock:
        known = {p: (d, t) for (store, p), (at, d, t) in _queues.items()
                 if store == id(svc.store) and p in pools and now - at < QUEUE_TTL_S}
    stale = sorted(pools - set(known))
    read = run_all([call for p in stale for call in (lambda p=p: svc.store.queue_depth(p),
                                                     lambda p=p: svc.store.taken_slot(p))])
    for i, pool in enumerate(stale):
        depth, taken = read[2 * i], read[2 * i + 1]
        with _queue_lock:
            _queues[(id(svc.store), pool)] = (now, depth, taken)
        known[pool] = (depth, taken)
    return known


def cancel(svc: Services, caller: Caller, job_id: str, root: str = "") -> dict[str, Any]:
    """POST /api/v2/jobs/{id}/cancel: idempotent; a finished job answers with its terminal state."""
    try:
        job = Job.model_validate(api.cancel_job(svc, caller, job_id))
    except AlreadyFinished:
        return get(svc, caller, job_id, root)
    return render(svc, [(job, not job.terminal)], root)[0]


def workflow(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    """GET /api/v2/jobs/{id}/workflow: the API-format graph the job ran (v2 submissions pin no version)."""
    api.visible_job(svc, caller, job_id)
    return {"workflow": api.job_workflow(svc, job_id), "format": "api"}


def list_jobs(svc: Services, caller: Caller, query: dict[str, str], root: str = "") -> dict[str, Any]:
    """GET /api/v2/jobs: a page of the caller's jobs, newest first; `next_cursor` while there are more.
    `status` takes v2 names, comma-separated; `metadata[key]=value` keeps jobs with those labels (both filter
    the page, so a filtered page may hold fewer jobs than `limit` and still have a next one)."""
    wanted = _statuses(query.get("status"))
    stored = {store_status(s) for s in wanted} if wanted else set()
    one = next(iter(stored)) if len(stored) == 1 and None not in stored else None
    jobs, next_cursor = api.list_page(svc, caller, status=one.value if one else None, cursor=query.get("cursor"),
                                      limit=query.get("limit") or LIST_DEFAULT)
    active = [j for j in jobs if not j.terminal]
    flags = dict(zip([j.id for j in active], run_all([lambda j=j: svc.store.cancel_requested(j.id) for j in active]),
                     strict=True))
    views = render(svc, [(j, bool(flags.get(j.id))) for j in jobs], root)
    labels = _label_filter(query)
    body: dict[str, Any] = {"jobs": [v for v in views if (not wanted or v["status"] in wanted)
                                     and labels.items() <= v["metadata"].items()]}
    if next_cursor:
        body["next_cursor"] = next_cursor
    return body


def _label_filter(query: dict[str, str]) -> dict[str, str]:
    """`metadata[key]=value` pairs (the SDK's label filter): a job is listed when it carries all of them."""
    return {k[len("metadata["):-1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}


def _statuses(raw: str | None) -> set[str]:
    names = {s.strip() for s in (raw or "").split(",") if s.strip()}
    allowed = ("queued", "running", "succeeded", "canceling", "canceled", "failed", "expired")
    if bad := sorted(names - set(allowed)):
        raise InvalidInput(f"status: {inputs.shown(bad[0])} is not one of {', '.join(allowed)}", field="status")
    return names


def _is_id(job_id: str) -> bool:
    return inputs.matches(inputs.JOB_ID, job_id)
