"""Operator commands over the store itself: queue depth, inspect, requeue, fail, purge.

They work on the local data directory, or (with --modal, e.g. inside `modal shell`) on the deployed
Dict and Queue. Every status change still goes through the store's claim and transition().
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import cleanup
from api import Services
from errors import Conflict
from models import JobError, Status, utcnow


def modal_services() -> Services:
    """Services over the deployed app's Dict and Queue (needs Modal credentials, as in `modal shell`)."""
    import modal

    import modal_runtime
    from app import APP_NAME

    jobs = modal.Dict.from_name(f"{APP_NAME}-jobs")
    work = modal.Queue.from_name(f"{APP_NAME}-work")
    return modal_runtime.services(jobs, work)


def queue_depths(svc: Services, pools: list[str]) -> dict[str, int]:
    """Items waiting per pool partition, and the total over all partitions."""
    depths = {pool: svc.store.queue_depth(pool) for pool in pools}
    depths["(all partitions)"] = svc.store.queue_depth()
    return depths


def inspect(svc: Services, job_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything kept about a job: record, claims, heartbeat age, cancel flag, webhook attempts."""
    job = svc.store.require(job_id)
    now = now or utcnow()
    claims = {n: svc.store.claim_owner(job_id, n) for n in range(1, job.claim_seq + 2)}
    return {
        "job": job.to_record(),
        "claims": {n: owner for n, owner in claims.items() if owner is not None},
        "heartbeat_age_s": round((now - job.heartbeat_at).total_seconds(), 1) if job.heartbeat_at else None,
        "cancel_requested": svc.store.cancel_requested(job_id),
        "webhook": svc.store.webhook(job_id),
    }


def requeue(svc: Services, job_id: str) -> dict[str, Any]:
    """Put a queued job's wake-up back, or take a running job over and queue it again."""
    job = svc.store.require(job_id)
    if job.status is Status.QUEUED:
        svc.store.enqueue(job)
        return job.public()
    if job.status is not Status.RUNNING:
        raise Conflict(f"job {job_id} is {job.status.value}; only queued or running jobs can be requeued")
    claim = svc.store.claim(job, "operator")
    if claim is None:
        raise Conflict("another actor took the job meanwhile; inspect it again")
    moved = svc.store.transition(job_id, Status.QUEUED, claim=claim,
                                 error=JobError(type="requeued", message="requeued by an operator"))
    svc.store.enqueue(moved)
    return moved.public()


def fail(svc: Services, job_id: str, reason: str) -> dict[str, Any]:
    """Fail an unfinished job (a live worker sees the cancel flag and stops)."""
    job = svc.store.require(job_id)
    if job.terminal:
        raise Conflict(f"job {job_id} already {job.status.value}")
    svc.store.flag_cancel(job_id)
    claim = svc.store.claim(job, "operator")
    if claim is None:
        raise Conflict("another actor took the job meanwhile; inspect it again")
    return svc.store.transition(job_id, Status.FAILED, claim=claim,
                                error=JobError(type="failed_by_operator", message=reason)).public()


def purge(svc: Services) -> Counter:
    """Run the retention cleanup now."""
    return cleanup.cleanup(svc.store, svc.objects, svc.settings)

