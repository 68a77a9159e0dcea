"""The sweeper: finds jobs whose worker vanished, that ran or waited too long, or whose wake-up was lost,
and decides them through the lifecycle, so a sweeper racing a worker (or another sweeper) never produces
two outcomes. It also keeps finished jobs with a pending webhook where the dispatcher finds them.

One run, all in parallel batches, with a time budget (unexamined jobs simply wait for the next run):
    load the watch list -> ingest jobs created since -> load the watched jobs (records; heartbeats of the
    running ones) -> decide each (pure) -> act -> save the list
Its cost grows with active jobs and new submissions, not with stored ones: about ten round trips when
there is nothing to do, and a few per batch of BATCH watched jobs (10,000 active among 100,000 stored take
one run of about 20 s at 25 ms per call: bench/bench.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from enum import StrEnum

from comfy_saas import logs
from comfy_saas.backends.parallel import run_all, settle_all
from comfy_saas.config import Settings
from comfy_saas.jobs import rollup, watchlist
from comfy_saas.jobs.deliveries import settled
from comfy_saas.jobs.model import Job, JobError, Status
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.watchlist import Entry

log = logging.getLogger(__name__)

LOST_WAKEUP_AFTER_S = 15.0  # waiting this long in an empty queue means the wake-up is gone (a duplicate is harmless)
FIFO_GRACE_S = 10.0  # clocks of different senders differ a little
BATCH = 2_000
BUDGET_S = 45.0  # Modal runs the sweep every minute with a 55 s timeout
OWNER = "sweeper"


class Action(StrEnum):
    FAIL_QUEUE_TIMEOUT = "fail_queue_timeout"
    FAIL_RUN_TIMEOUT = "fail_run_timeout"
    REQUEUE = "requeue"
    FAIL_WORKER_LOST = "fail_worker_lost"
    REENQUEUE = "reenqueue"


def decide(job: Job, now: datetime, settings: Settings, wakeup_lost: bool) -> Action | None:
    """What the sweeper should do about one job (pure)."""
    if job.queue_timed_out(now, settings.queue_timeout_s):
        return Action.FAIL_QUEUE_TIMEOUT
    if job.run_timed_out(now, settings.job_timeout_s):
        return Action.FAIL_RUN_TIMEOUT
    if job.heartbeat_stale(now, settings.heartbeat_stale_s):
        return Action.REQUEUE if job.retryable(settings.max_attempts) else Action.FAIL_WORKER_LOST
    if job.status is Status.QUEUED and wakeup_lost:
        return Action.REENQUEUE
    return None


def wakeup_lost(sent_at: float, now: float, queue_empty: bool, taken_up_to: float) -> bool:
    """Whether a queued job's wake-up, sent at `sent_at`, is gone (pure): the pool's queue is empty and it
    has waited a while, or the queue (FIFO) already handed out a wake-up sent well after it."""
    if queue_empty and now - sent_at > LOST_WAKEUP_AFTER_S:
        return True
    return taken_up_to - sent_at > FIFO_GRACE_S


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


def sweep(svc: Services, now: datetime | None = None, owner: str = OWNER, budget_s: float = BUDGET_S) -> Counter:
    """One run over the watch list; counts of what was done (`examined` jobs, `deferred` ones left for the
    next run, and each action taken)."""
    now = now or svc.store.clock()
    deadline = time.monotonic() + budget_s
    watch = watchlist.load(svc.store)
    done: Counter = Counter(ingested=watchlist.ingest(svc.store, watch))
    kept: list[Entry] = []
    deferred: list[Entry] = []
    for start in range(0, len(watch.entries), BATCH):
        batch = watch.entries[start:start + BATCH]
        if time.monotonic() > deadline:
            deferred += batch
            continue
        done["examined"] += len(batch)
        kept += _sweep_batch(svc, batch, now, owner, done)
    done["deferred"] = len(deferred)
    watch.entries = deferred + kept  # out of time: what was not examined goes first next run, so none starves
    watchlist.save(svc.store, watch)
    done["shards_folded"] = _fold_counters(svc)
    if sum(v for k, v in done.items() if k not in {"ingested", "examined", "deferred", "shards_folded"}):
        log.info("sweep: %s", dict(done))
    return done


def _fold_counters(svc: Services) -> int:
    """Fold idle metrics shards (jobs/rollup.py); never fails the sweep, which is about jobs."""
    try:
        return rollup.fold_idle_shards(svc.store)
    except Exception as exc:
        logs.event(log, "sweeper.fold_failed", logging.WARNING, error=str(exc))
        return 0


def _sweep_batch(svc: Services, batch: list[Entry], now: datetime, owner: str, done: Counter) -> list[Entry]:
    """Examine and act on one batch; the entries still to watch."""
    jobs = _load(svc, batch)
    pools = _pool_state(svc, {j.pool for j in jobs.values() if j.status is Status.QUEUED})
    kept, moves, finished = [], [], {}
    for entry in batch:
        job = jobs.get(entry.job_id)
        if job is None:
            continue  # deleted or expired: nothing left to watch
        if job.terminal:
            if job.webhook_url:
                kept.append(Entry(entry.job_id, hook_only=True))  # the delivery is checked below
                finished[job.id] = job
            continue
        action = decide(job, now, svc.settings, _lost(entry, job, now, pools))
        if action is not None:
            moves.append((entry, job, action))
        kept.append(entry)
    _act_all(svc, moves, now, owner, done)
    return _drop_settled_hooks(svc, kept, finished, done)


def _load(svc: Services, batch: list[Entry]) -> dict[str, Job]:
    """The batch's jobs; the running ones with their heartbeats (two round trips)."""
    records = svc.store.get_many([e.job_id for e in batch], live=False)
    jobs = {j.id: j for j in records if j is not None}
    jobs.update({j.id: j for j in svc.store.live_of(list(jobs.values()))})
    return jobs


def _pool_state(svc: Services, pools: set[str]) -> dict[str, tuple[bool, float]]:
    """Per pool with queued jobs: (queue empty, the send time of the newest wake-up a worker took)."""
    names = sorted(pools)
    got = run_all([lambda p=p: svc.store.queue_depth(p) for p in names] +
                  [lambda p=p: svc.store.state(f"taken:{p}", 0.0) for p in names])
    return {p: (got[i] == 0, float(got[len(names) + i] or 0.0)) for i, p in enumerate(names)}


def _lost(entry: Entry, job: Job, now: datetime, pools: dict[str, tuple[bool, float]]) -> bool:
    if job.status is not Status.QUEUED:
        return False
    empty, taken = pools.get(job.pool, (False, 0.0))
    sent = max(job.updated_at.timestamp(), entry.resent_at)
    return wakeup_lost(sent, now.timestamp(), empty, taken)


def _act_all(svc: Services, moves: list[tuple[Entry, Job, Action]], now: datetime, owner: str,
             done: Counter) -> None:
    # One job's failure (a full queue, the store away a moment) must not stop the run: that job is
    # examined again next run, and the run still saves what it learned about the others.
    results = settle_all([lambda j=j, a=a: act(svc, j, a, owner) for _, j, a in moves])
    for (entry, job, action), acted in zip(moves, results, strict=True):
        if isinstance(acted, BaseException):
            done["act_failed"] += 1
            logs.event(log, "sweeper.act_failed", logging.WARNING, job_id=job.id, error=str(acted))
            continue
        if not acted:
            continue
        done[action.value] += 1
        if action is Action.REENQUEUE:
            entry.resent_at = now.timestamp()
        logs.event(log, f"sweeper.{action.value}", job_id=job.id, attempt=job.attempts, worker_id=owner,
                   phase="sweep", status=job.status.value)


def _drop_settled_hooks(svc: Services, kept: list[Entry], finished: dict[str, Job], done: Counter) -> list[Entry]:
    """Stop watching delivered (or given up) webhooks. A finished job with no delivery at all lost its
    finisher between its record and its side effects: those are run again here (they are idempotent)."""
    hooks = [e for e in kept if e.hook_only]
    deliveries = svc.store.webhooks([e.job_id for e in hooks])
    lost = [finished[e.job_id] for e, d in zip(hooks, deliveries, strict=True) if d is None and e.job_id in finished]
    run_all([lambda j=j: svc.lifecycle.redo_consequences(j, OWNER) for j in lost])
    done["side_effects_redone"] += len(lost)
    settled_ids = {e.job_id for e, d in zip(hooks, deliveries, strict=True) if d is not None and settled(d)}
    return [e for e in kept if e.job_id not in settled_ids]
