"""The sweeper: finds jobs whose worker vanished, that ran or waited too long, or whose wake-up was lost,
and decides them through the lifecycle, so a sweeper racing a worker (or another sweeper) never produces
two outcomes. It reads only the window of the index where unfinished jobs can be.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from enum import StrEnum

from comfy_saas import logs
from comfy_saas.config import Settings
from comfy_saas.jobs import keys
from comfy_saas.jobs.index import past_finished_prefix
from comfy_saas.jobs.model import Job, JobError, Status
from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)

SWEEP_MAX_SLOTS = 5_000
LOST_WAKEUP_AFTER_S = 60.0
OWNER = "sweeper"


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
_TARGETS = {Action.FAIL_QUEUE_TIMEOUT: Status.FAILED, Action.FAIL_RUN_TIMEOUT: Status.FAILED,
            Action.FAIL_WORKER_LOST: Status.FAILED, Action.REQUEUE: Status.QUEUED}


def act(svc: Services, job: Job, action: Action, owner: str = OWNER) -> bool:
    """Carry out one decision; False when someone else decided first."""
    if action is Action.REENQUEUE:
        svc.store.enqueue(job)
        return True
    return svc.lifecycle.take_over(job, _TARGETS[action], _ERRORS[action], owner) is not None


def active_window(svc: Services, max_slots: int) -> tuple[bool, list[tuple[int, Job | None]]]:
    """Up to max_slots index slots between the low-water mark and the head, where every unfinished job
    lives; consecutive calls rotate through a window wider than max_slots. (starts at low, slots)"""
    store = svc.store
    low = store.state("sweep_low", 1)
    head = store.index.head(keys.ALL)
    start = max(low, store.state("sweep_cursor", low))
    if start > head:
        start = low
    end = min(head, start + max_slots - 1)
    store.save_state("sweep_cursor", end + 1)
    numbers = list(range(start, end + 1))
    jobs = store.get_many(store.index.slots(keys.ALL, numbers))
    return start == low, list(zip(numbers, jobs, strict=True))


def sweep(svc: Services, now: datetime | None = None, owner: str = OWNER) -> Counter:
    """One pass over the active window; counts of what was done."""
    now = now or svc.store.clock()
    from_low, window = active_window(svc, SWEEP_MAX_SLOTS)
    done: Counter = Counter()
    idle: dict[str, bool] = {}
    for _, job in window:
        if job is None or job.terminal:
            continue
        if job.pool not in idle:
            idle[job.pool] = svc.store.queue_depth(job.pool) == 0
        action = decide(job, now, svc.settings, idle[job.pool])
        if action is not None and act(svc, job, action, owner):
            done[action.value] += 1
            logs.event(log, f"sweeper.{action.value}", job_id=job.id, attempt=job.attempts, worker_id=owner,
                       phase="sweep", status=job.status.value)
    new_low = past_finished_prefix(window, lambda j: j is None or j.terminal) if from_low else None
    if new_low is not None:
        svc.store.save_state("sweep_low", new_low)
    if done:
        log.info("sweep: %s", dict(done))
    return done
