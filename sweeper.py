"""The sweeper: finds jobs whose worker vanished, that ran or waited too long, or whose wake-up was lost.

Every decision is taken through the store's claim, so a sweeper racing a worker, or another sweeper,
never produces two outcomes. It reads only the window of the index where unfinished jobs can be.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from enum import StrEnum

import logs
from errors import IllegalTransition, NotOwner
from models import Job, JobError, Status, utcnow
from settings import Settings
from storage import JobStore, past_finished_prefix

log = logging.getLogger(__name__)

SWEEP_MAX_SLOTS = 5_000
LOST_WAKEUP_AFTER_S = 60.0


class Action(StrEnum):
    FAIL_QUEUE_TIMEOUT = "fail_queue_timeout"
    FAIL_RUN_TIMEOUT = "fail_run_timeout"
    REQUEUE = "requeue"
    FAIL_WORKER_LOST = "fail_worker_lost"
    REENQUEUE = "reenqueue"


def decide(job: Job, now: datetime, settings: Settings, queue_idle: bool) -> Action | None:
    """What the sweeper should do about one job (pure)."""
    if job.queue_timed_out(now, settings.queue_timeout_s):
        return Action.FAIL_QUEUE_TIMEOUT
    if job.run_timed_out(now, settings.job_timeout_s):
        return Action.FAIL_RUN_TIMEOUT
    if job.heartbeat_stale(now, settings.heartbeat_stale_s):
        return Action.REQUEUE if job.retryable(settings.max_attempts) else Action.FAIL_WORKER_LOST
    waited = now - job.updated_at > timedelta(seconds=LOST_WAKEUP_AFTER_S)
    if job.status is Status.QUEUED and queue_idle and waited:
        return Action.REENQUEUE
    return None


_ERRORS = {
    Action.FAIL_QUEUE_TIMEOUT: JobError(type="queue_timeout", message="no worker took the job in time"),
    Action.FAIL_RUN_TIMEOUT: JobError(type="timeout", message="job exceeded its run time"),
    Action.FAIL_WORKER_LOST: JobError(type="worker_lost", message="the worker stopped reporting; attempts used up"),
    Action.REQUEUE: JobError(type="worker_lost", message="the worker stopped reporting; retrying"),
}


def act(store: JobStore, job: Job, action: Action, owner: str = "sweeper") -> bool:
    """Carry out one decision; False when someone else decided first."""
    if action is Action.REENQUEUE:
        store.enqueue(job)
        return True
    if job.status is Status.RUNNING and action is not Action.REQUEUE:
        store.flag_cancel(job.id)  # so a live worker interrupts ComfyUI
    claim = store.claim(job, owner)
    if claim is None:
        return False
    target = Status.QUEUED if action is Action.REQUEUE else Status.FAILED
    try:
        moved = store.transition(job.id, target, claim=claim, error=_ERRORS[action])
    except (IllegalTransition, NotOwner):
        return False
    if target is Status.QUEUED:
        store.enqueue(moved)
    return True


def sweep(store: JobStore, settings: Settings, now: datetime | None = None, owner: str = "sweeper") -> Counter:
    """One pass over the active window; counts of what was done."""
    now = now or utcnow()
    from_low, window = store.active_window(SWEEP_MAX_SLOTS)
    done: Counter = Counter()
    idle: dict[str, bool] = {}
    for _, job in window:
        if job is None or job.terminal:
            continue
        if job.pool not in idle:
            idle[job.pool] = store.queue_depth(job.pool) == 0
        action = decide(job, now, settings, idle[job.pool])
        if action is not None and act(store, job, action, owner):
            done[action.value] += 1
            logs.event(log, f"sweeper.{action.value}", job_id=job.id, attempt=job.attempts, worker_id=owner,
                       phase="sweep", status=job.status.value)
    new_low = past_finished_prefix(window, lambda j: j is None or j.terminal) if from_low else None
    if new_low is not None:
        store.raise_low_water(new_low)
    if done:
        log.info("sweep: %s", dict(done))
    return done
