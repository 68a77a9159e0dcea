"""A job rendered as the Comfy API v2 Job object. The job model is the same one /v1 renders: the v2 status,
progress, outputs, error and metrics are read off it, never stored for this surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job, Output, Progress, Status

if TYPE_CHECKING:
    from comfy_saas.jobs.services import Services

PREFIX = "/api/v2"
TERMINAL = frozenset({"succeeded", "canceled", "failed", "expired"})
# A job the sweeper failed for running or waiting too long ran out of time: the contract calls that expired.
EXPIRED_ERRORS = frozenset({"queue_timeout", "timeout"})
_STATUS = {Status.QUEUED: "queued", Status.RUNNING: "running", Status.COMPLETED: "succeeded",
           Status.CANCELLED: "canceled", Status.FAILED: "failed"}
# Our job error types that have a contract name of their own.
_ERROR_CODES = {"execution_error": "node_execution_error", "validation_error": "invalid_workflow",
                "cancelled": "canceled"}
_V1_OF = {"queued": Status.QUEUED, "running": Status.RUNNING, "succeeded": Status.COMPLETED,
          "canceled": Status.CANCELLED, "failed": Status.FAILED, "expired": Status.FAILED,
          "canceling": None}


@dataclass(frozen=True)
class Live:
    """What the job record does not say and a view needs: the cancel flag, the pool's queue depth and the
    listing slot of the job its workers took last (store.taken_slot); None where not read."""

    cancel_requested: bool = False
    queue_depth: int | None = None
    taken_slot: int | None = None


def v2_status(job: Job, cancel_requested: bool = False) -> str:
    """The contract's status for a job: `canceling` while a cancel waits for the worker, `expired` for time-outs."""
    if job.status in (Status.QUEUED, Status.RUNNING) and cancel_requested:
        return "canceling"
    if job.status is Status.FAILED and job.error is not None and job.error.type in EXPIRED_ERRORS:
        return "expired"
    return _STATUS[job.status]


def store_status(v2: str) -> Status | None:
    """The store's status a v2 status is rendered from (None for `canceling`, which has no own status)."""
    return _V1_OF[v2]


def job_links(job_id: str, root: str = "") -> dict[str, str]:
    """Host-relative follow-up links, with the prefix the surface is mounted under."""
    base = f"{root}{PREFIX}/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def v2_job(svc: Services, job: Job, live: Live | None = None, root: str = "") -> dict[str, Any]:
    """The contract's Job object for one of our jobs."""
    live = live or Live()
    status = v2_status(job, live.cancel_requested)
    return {
        "id": job.id, "status": status, "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at) if job.terminal else None, "expires_at": _iso(expires_at(svc, job)),
        "queue_position": queue_position(job, live), "progress": progress(job, status),
        "outputs": outputs(svc, job), "error": job_error(job), "metrics": metrics(job),
        "urls": job_links(job.id, root), "metadata": _labels(job.metadata),
        "create_time": _iso(job.created_at), "update_time": _iso(job.updated_at),
    }


def expires_at(svc: Services, job: Job) -> datetime:
    """When retention deletes the job (cleanup goes by creation time)."""
    return job.created_at + timedelta(days=svc.settings.retention_days)


def queue_position(job: Job, live: Live) -> int | None:
    """How many jobs are ahead of a queued one in its pool, from two bounds read without a scan: the pool's
    waiting wake-ups but its own, and the jobs listed between the one its workers took last and this one
    (exact with one pool; other pools' and finished jobs listed in between make it an upper bound). None once
    it left the queue, or when neither was read."""
    if job.status is not Status.QUEUED:
        return None
    bounds = [] if live.queue_depth is None else [live.queue_depth - 1]
    slot = job.index_slots.get(keys.ALL)
    if slot is not None and live.taken_slot is not None and slot >= live.taken_slot:
        bounds.append(slot - live.taken_slot - 1)  # a job listed before the last taken one was handed back
    return max(0, min(bounds)) if bounds else None


def progress(job: Job, status: str) -> dict[str, Any] | None:
    """The latest progress snapshot; a finished job's is complete."""
    p = job.progress
    if status == "succeeded":
        total = len(job.timings.nodes) if job.timings else 0  # every node that ran or was cached
        total = total or (p.nodes_total or 0 if p else 0)
        return {"value": 1.0, "nodes_done": total, "nodes_total": total, "current_node": None,
                "current_node_class": None, "step": None, "steps": None, "message": None}
    if p is None:
        return None
    return progress_snapshot(p)


def progress_snapshot(p: Progress) -> dict[str, Any]:
    """Our Progress as the contract's (a fraction, and a message saying what runs)."""
    return {"value": round(min(1.0, max(0.0, p.percent / 100)), 4), "nodes_done": p.nodes_done,
            "nodes_total": p.nodes_total or 0, "current_node": p.node_id, "current_node_class": p.node_class,
            "step": p.step, "steps": p.steps, "message": _message(p)}


def _message(p: Progress) -> str | None:
    if p.phase in ("download", "download_wait"):
        what = "downloading" if p.phase == "download" else "waiting for"
        return f"{what} {p.file or 'a model file'}"
    if p.node_class and p.step is not None and p.steps:
        return f"{p.node_class} {p.step}/{p.steps}"
    return p.node_class


def outputs(svc: Services, job: Job, items: list[Output] | None = None) -> list[dict[str, Any]]:
    """Every committed output (or those of `items`) as the contract's Output: an asset (v2/output_assets.py),
    with a fresh URL."""
    from comfy_saas.v2.output_assets import output_assets

    return output_assets(svc, job, items)


def job_error(job: Job) -> dict[str, Any] | None:
    """A failed, expired or canceled job's error as the contract's JobError."""
    if job.error is None or job.status in (Status.QUEUED, Status.RUNNING, Status.COMPLETED):
        return None
    e = job.error
    return {"code": _ERROR_CODES.get(e.type, e.type), "message": e.message, "node_id": e.node_id,
            "class_type": e.node_class, "traceback": _traceback(e.details)}


def _traceback(details: list[dict[str, Any]]) -> str | None:
    """The tail of ComfyUI's traceback a failed node left (the worker keeps its last lines)."""
    lines = next((d["traceback"] for d in details if isinstance(d.get("traceback"), list)), [])
    return "".join(str(line) for line in lines) or None


def metrics(job: Job) -> dict[str, int | None]:
    """Phase timings in whole milliseconds; null where a phase has not happened yet."""
    t = job.timings
    queue_ms = t.queue_wait_ms if t else (_ms(job.started_at - job.created_at) if job.started_at else None)
    values = {"queue_ms": queue_ms, "execution_ms": t.execute_ms if t else None,
              "prepare_ms": t.prepare_ms if t else None, "upload_ms": t.upload_ms if t else None,
              "finish_ms": t.finish_ms if t else None, "total_ms": t.total_ms if t else None,
              "download_ms": t.download_ms if t else None}
    return {k: None if v is None else round(v) for k, v in values.items()}


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def _labels(metadata: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else str(v) for k, v in metadata.items() if v is not None}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")
