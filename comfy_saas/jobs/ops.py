"""Operator commands over the store itself: queue depth, inspect, requeue, fail, purge, the model cache.

They work on the local data directory, or (with --modal, e.g. inside `modal shell`) on the deployed
Dict and Queue. Every status change goes through the lifecycle.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from comfy_saas.jobs import cleanup
from comfy_saas.jobs.model import JobError, utcnow
from comfy_saas.jobs.model_cache import ModelCache
from comfy_saas.jobs.services import Services

OWNER = "operator"


def queue_depths(svc: Services, pools: list[str]) -> dict[str, int]:
    """Items waiting per pool partition, and the total over all partitions."""
    depths = {pool: svc.store.queue_depth(pool) for pool in pools}
    depths["(all partitions)"] = svc.store.queue_depth()
    return depths


def inspect(svc: Services, job_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything kept about a job: record, claims, heartbeat age, cancel flag, webhook attempts."""
    job = svc.store.require(job_id)
    now = now or utcnow()
    entries = {n: svc.store.claim_entry(job_id, n) for n in range(1, job.claim_seq + 2)}
    moves = {n: {"owner": e["owner"], "at": e["at"], "status": (e.get("outcome") or {}).get("status")}
             for n, e in entries.items() if e is not None}
    return {
        "job": job.to_record(),
        "moves": moves,  # claim n: who moved the job from the record at n-1, when, and to what
        "record_behind": any(n > job.claim_seq for n in moves),
        "heartbeat_age_s": round((now - job.heartbeat_at).total_seconds(), 1) if job.heartbeat_at else None,
        "cancel_requested": svc.store.cancel_requested(job_id),
        "webhook": svc.store.webhook(job_id),
    }


def requeue(svc: Services, job_id: str) -> dict[str, Any]:
    """Put a queued job's wake-up back, or take a running job over and queue it again."""
    job = svc.store.require(job_id)
    error = JobError(type="requeued", message="requeued by an operator")
    return svc.lifecycle.requeue(job, error, OWNER).public()


def fail(svc: Services, job_id: str, reason: str) -> dict[str, Any]:
    """Fail an unfinished job (a live worker sees the cancel flag and stops)."""
    job = svc.store.require(job_id)
    return svc.lifecycle.fail(job, JobError(type="failed_by_operator", message=reason), OWNER).public()


def purge(svc: Services) -> Counter:
    """Run the retention cleanup now."""
    return cleanup.cleanup(svc)


def models(svc: Services) -> list[dict[str, Any]]:
    """The cached model files: folder, name, sha256, size, source URL, last use (as GET /v1/models)."""
    return ModelCache(svc).listing()


def delete_model(svc: Services, sha256: str) -> dict[str, Any]:
    """Remove one cached model file unless a running job uses it (as DELETE /v1/models/{sha256})."""
    return ModelCache(svc).delete(sha256)
