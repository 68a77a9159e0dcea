"""The lifecycle under faults and races: a crashed finisher is repaired with its side effects exactly once,
and progress writes racing every other move never bring a moved job back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, Receiver, submit, wait_until

from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.errors import Overloaded
from comfy_saas.jobs import sweeper, webhooks
from comfy_saas.jobs.lifecycle import AttemptMoved
from comfy_saas.jobs.model import TERMINAL_STATUSES, Job, JobError, Progress, Status, check_transition, utcnow
from comfy_saas.jobs.services import Services


class Crash(BaseException):
    """The process died here: nothing after this line of the caller runs."""


class CrashingDict(LocalDict):
    """The real twin, which dies once when a terminal record is written (after the move was decided)."""

    armed = False

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        terminal = isinstance(value, dict) and value.get("status") in {s.value for s in TERMINAL_STATUSES}
        if self.armed and str(key).startswith("job:") and terminal:
            self.armed = False
            raise Crash()
        return super().put(key, value, skip_if_exists=skip_if_exists)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def test_a_finisher_dying_after_its_decision_still_ends_the_job_once(db_path: Path, tmp_path: Path,
                                                                      receiver: Receiver):
    clock, d = Clock(), CrashingDict(db_path)
    settings = Settings(data_dir=tmp_path, webhook_secret=SECRET, private_url_allowlist="127.0.0.1/32",
                        url_signing_secret="s", max_active_jobs=1)
    svc = Services.over(d, LocalQueue(db_path), settings, LocalStore(tmp_path / "out", "s", "http://x"), clock=clock)
    job = svc.lifecycle.start(submit(svc, webhook_url=receiver.url), "worker-1")
    svc.store.settle(job.id)
    d.armed = True
    with pytest.raises(Crash):
        svc.lifecycle.finish(job, Status.COMPLETED)
    assert svc.store.get(job.id).status is Status.RUNNING  # decided, but the record never said so
    with pytest.raises(Overloaded):
        submit(svc)  # its quota slot is still held

    clock.now += timedelta(seconds=settings.heartbeat_stale_s + 1)
    sweeper.sweep(svc)  # finds the silent job, loses its move to the dead finisher's, and finishes that one

    assert svc.store.get(job.id).status is Status.COMPLETED
    wait_until(lambda: len(receiver.received) == 1, 10, "the webhook")
    for _ in range(3):
        webhooks.dispatch(svc)
        sweeper.sweep(svc)
    assert [r["type"] for r in receiver.received] == ["job.completed"] and receiver.bad_signatures == 0
    assert svc.store.webhook(job.id)["state"] == "delivered"
    assert submit(svc).status is Status.QUEUED  # the slot came back


def _race_once(svc: Services) -> None:
    running = svc.lifecycle.start(submit(svc), "worker-1")
    svc.store.settle(running.id)
    barrier = threading.Barrier(4)
    lost = JobError(type="worker_lost", message="-")

    def progress() -> None:
        barrier.wait()
        for i in range(3):
            try:
                svc.lifecycle.heartbeat(running, Progress(percent=10.0 * i))
            except AttemptMoved:
                return

    def requeue() -> Job | None:
        barrier.wait()
        return svc.lifecycle.take_over(svc.store.get(running.id), Status.QUEUED, lost, "sweeper")

    def cancel() -> None:
        barrier.wait()
        svc.lifecycle.cancel(running.id)

    def finish() -> Job | None:
        barrier.wait()
        return svc.lifecycle.finish(running, Status.COMPLETED)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(f) for f in (progress, requeue, cancel, finish)]
        results = [f.result() for f in futures]
    requeued, finished = results[1], results[3]
    # Exactly one of the two moves from the running record won.
    assert sum(m is not None for m in (requeued, finished)) == 1, (requeued, finished)
    # The record is the outcome of the last decision, and the decisions form a legal chain.
    chain, n = [Status.RUNNING], running.claim_seq + 1
    while (entry := svc.store.claim_entry(running.id, n)) is not None:
        check_transition(chain[-1], Status(entry["outcome"]["status"]))
        chain, n = [*chain, Status(entry["outcome"]["status"])], n + 1
    final = svc.store.get(running.id)
    assert final.status is chain[-1] and final.claim_seq == n - 1
    if finished is not None:
        assert chain == [Status.RUNNING, Status.COMPLETED]
    else:  # requeued; the cancel may then have found it queued and cancelled it
        assert chain in ([Status.RUNNING, Status.QUEUED], [Status.RUNNING, Status.QUEUED, Status.CANCELLED])
    if final.status is Status.QUEUED:  # the old attempt's heartbeats do not show on the requeued job
        assert final.progress is None and final.heartbeat_at is None


def test_progress_racing_requeue_cancel_and_finish_never_resurrects_a_job(db_path: Path, tmp_path: Path):
    svc = Services.over(LocalDict(db_path), LocalQueue(db_path), Settings(data_dir=tmp_path, url_signing_secret="s"),
                        LocalStore(tmp_path / "out", "s", "http://x"))
    for _ in range(1000):
        _race_once(svc)
    statuses = {j.status for j in svc.store.list_jobs(limit=100).jobs}
    assert statuses <= {Status.QUEUED, Status.COMPLETED, Status.CANCELLED}
