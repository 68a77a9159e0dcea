"""Waking drains on Modal, simulated over the twins: a recording spawner stands in for `.spawn()` and runs each
spawned drain (runner/drains.run_drain over a real Worker) in a thread, the way Modal runs a drain input in a
container. The ComfyUI behind each worker completes prompts at once, so thousands of jobs take seconds."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKFLOW, submit, wait_until
from fake_comfy import InstantComfy

from comfy_saas import modal_runtime
from comfy_saas.config.deploy import Pool
from comfy_saas.config.pools import format_pools
from comfy_saas.errors import QueueFull
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Status
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.wakeups import PoolState, Wakeups, spawns_needed
from comfy_saas.runner.drains import DrainPlan, run_drain
from comfy_saas.runner.worker import Worker

POOLS = "default:ceiling=4,video:floor=1:ceiling=2"


class Throttled(Exception):
    """Stands in for modal.exception.ResourceExhaustedError."""


class Spawner:
    """Records every spawn; runs each as a drain thread unless told to fail."""

    def __init__(self, svc: Services, tmp: Path, idle_s: float = 0.3, video_timeout_s: float = 2.0) -> None:
        self.svc, self.tmp = svc, tmp
        timeouts = {"default": 7200.0, "video": video_timeout_s}  # video's floor drain returns at its deadline
        self.plans = {p: DrainPlan(p, timeouts[p], margin_s=0, idle_s=idle_s, floor=spec.floor)
                      for p, spec in svc.settings.pool_table().items()}
        self.calls: list[tuple[str, int]] = []
        self.failures: list[type[Exception]] = []  # raised by the next spawns, in order
        self.threads: list[threading.Thread] = []
        self.handled: list[int] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}  # most drains of a pool alive at once
        self._lock = threading.Lock()
        self.stopped = False
        self.age_next_s = 0.0  # the next drain's input started this long ago
        self.wakeups = Wakeups(svc.store, self, retry_on=(Throttled,), sleep=lambda s: None)
        svc.wake = self.wakeups.wake

    def __call__(self, pool: str, slot: int) -> None:
        self.calls.append((pool, slot))
        if self.stopped:
            raise RuntimeError("the simulation is over")
        if self.failures:
            raise self.failures.pop(0)("spawn refused")
        worker = Worker(self.svc, InstantComfy(), pool=pool, scratch_dir=self.tmp)
        started, self.age_next_s = time.monotonic() - self.age_next_s, 0.0
        thread = threading.Thread(target=self._drain, args=(worker, pool, slot, started), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _drain(self, worker: Worker, pool: str, slot: int, started: float) -> None:
        self._count(pool, +1)
        try:
            self.handled.append(run_drain(worker, self.wakeups, self.plans[pool], slot, started))
        finally:
            self._count(pool, -1)

    def _count(self, pool: str, step: int) -> None:
        with self._lock:
            self.running[pool] = self.running.get(pool, 0) + step
            self.peak[pool] = max(self.peak.get(pool, 0), self.running[pool])

    def settle(self, timeout_s: float = 60) -> None:
        """Wait until every drain spawned so far (and any it spawned on its way out) has returned."""
        wait_until(lambda: all(not t.is_alive() for t in list(self.threads)), timeout_s, "drains to return")

    def finish(self) -> None:
        """Refuse further spawns (a floor would be respawned for ever) and wait for the drains to return."""
        self.stopped = True
        self.settle()


@pytest.fixture
def pooled(svc: Services) -> Services:
    svc.settings = replace(svc.settings, pools=POOLS)
    svc.store.settings = svc.lifecycle.settings = svc.settings
    return svc


def submit_like_a_client(svc: Services, body: dict[str, Any]) -> str:
    """Submit, and on a 429 (the queue partition holds 5,000) wait a moment and retry, as a client would."""
    while True:
        try:
            return submit_job(svc, Caller("sim"), body)[0]["id"]
        except QueueFull:
            time.sleep(0.05)


def statuses(svc: Services, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        for job in svc.store.get_many(ids[i:i + 500]):
            out[job.status.value] = out.get(job.status.value, 0) + 1
    return out


@pytest.mark.parametrize(("state", "expected"), [
    (PoolState(queued=0, idle=0, busy=0, floor=0, ceiling=4), 0),
    (PoolState(queued=1, idle=0, busy=0, floor=0, ceiling=4), 1),
    (PoolState(queued=1, idle=1, busy=0, floor=0, ceiling=4), 0),  # an idle (or just spawned) drain takes it
    (PoolState(queued=1, idle=0, busy=1, floor=0, ceiling=4), 1),  # a busy drain cannot take it now
    (PoolState(queued=10_000, idle=0, busy=0, floor=0, ceiling=4), 4),
    (PoolState(queued=10_000, idle=1, busy=3, floor=0, ceiling=4), 0),
    (PoolState(queued=0, idle=0, busy=0, floor=2, ceiling=4), 2),  # the floor is kept even without work
    (PoolState(queued=5, idle=1, busy=0, floor=1, ceiling=2), 1),
])
def test_spawn_only_for_work_the_idle_drains_cannot_take(state: PoolState, expected: int):
    assert spawns_needed(state) == expected


def test_ten_thousand_submissions_spawn_at_most_the_ceiling_and_all_complete(pooled: Services, tmp_path: Path):
    # Drains wait 3 s for work before returning: a pause in the burst longer than that (a slow CI machine)
    # rightly lets a drain go and the next submission spawn it again, which is not what this counts.
    spawner = Spawner(pooled, tmp_path, idle_s=3.0)
    spawner.failures = [Throttled, Throttled]  # the first spawn is rate-limited twice, then goes through
    ids = [submit_like_a_client(pooled, {"workflow": WORKFLOW}) for _ in range(10_000)]
    spawner.settle()
    ceiling = pooled.settings.pool_table()["default"].ceiling
    assert len(spawner.calls) <= ceiling + 2, spawner.calls
    assert spawner.peak["default"] <= ceiling
    assert statuses(pooled, ids) == {"completed": 10_000}
    assert sum(spawner.handled) >= 10_000 and pooled.store.queue_depth("default") == 0
    assert all(pooled.store.d.get(keys.drain_slot("default", n)) is None for n in range(ceiling))  # slots given back


def test_a_failed_spawn_leaves_the_job_queued_and_the_next_sweep_completes_it(pooled: Services, tmp_path: Path):
    spawner = Spawner(pooled, tmp_path)
    spawner.failures = [RuntimeError]  # not a rate limit: no retry
    view, created = submit_job(pooled, Caller("k"), {"workflow": WORKFLOW})
    assert created and view["status"] == "queued" and spawner.calls == [("default", 0)]
    assert pooled.store.d.get(keys.drain_slot("default", 0)) is None  # the claim was given back
    modal_runtime.sweep(pooled, spawner.wakeups.wake_all)
    wait_until(lambda: pooled.store.get(view["id"]).status is Status.COMPLETED, 30, "the job")
    spawner.finish()


def test_a_non_default_pools_lost_wake_up_is_recovered_by_the_next_sweep(pooled: Services, tmp_path: Path):
    spawner = Spawner(pooled, tmp_path, idle_s=0.2)
    job = submit(pooled, pool="video", timeout_s=1)
    assert pooled.store.next_job_id("video", timeout_s=1) == job.id  # the wake-up is lost (taken, never run)
    later = pooled.store.clock() + timedelta(minutes=2)
    pooled.store.clock = lambda: later
    modal_runtime.sweep(pooled, spawner.wakeups.wake_all)
    assert ("video", 0) in spawner.calls
    wait_until(lambda: pooled.store.get(job.id).status is Status.COMPLETED, 30, "the video job")
    spawner.finish()


def test_a_drain_stops_taking_jobs_before_its_deadline(pooled: Services, tmp_path: Path):
    fits, too_long = submit(pooled, timeout_s=60), submit(pooled, timeout_s=3_000)
    worker = Worker(pooled, InstantComfy(), scratch_dir=tmp_path)
    handled = worker.drain(idle_s=5, deadline=time.monotonic() + 600)
    assert handled == 2
    assert pooled.store.get(fits.id).status is Status.COMPLETED
    assert pooled.store.get(too_long.id).status is Status.QUEUED  # not started: handed back, not killed later
    assert pooled.store.next_job_id("default", timeout_s=1) == too_long.id


def test_a_drain_near_its_deadline_hands_the_job_to_a_fresh_one(pooled: Services, tmp_path: Path):
    spawner = Spawner(pooled, tmp_path, idle_s=0.2)
    spawner.plans["default"] = DrainPlan("default", timeout_s=600, margin_s=0, idle_s=0.2)
    spawner.age_next_s = 550  # the first drain's input started 550 s ago: 50 s are left
    job = submit(pooled, timeout_s=100)
    spawner.wakeups.wake("default")
    wait_until(lambda: pooled.store.get(job.id).status is Status.COMPLETED, 10, "the job")
    spawner.finish()
    assert spawner.calls == [("default", 0), ("default", 0)] and pooled.store.get(job.id).attempts == 1


def test_a_job_capped_at_its_pools_maximum_fits_a_fresh_drain(pooled: Services, tmp_path: Path):
    pool = Pool(name="default", gpus=["L4"], timeout_s=900, drain_margin_s=120, drain_idle_s=0.2)
    svc_settings = replace(pooled.settings, pools=format_pools([pool.spec()]))
    pooled.settings = pooled.store.settings = pooled.lifecycle.settings = svc_settings
    spawner = Spawner(pooled, tmp_path)
    spawner.plans["default"] = DrainPlan.for_pool(pool)
    view, _ = submit_job(pooled, Caller("k"), {"workflow": WORKFLOW})  # no timeout_s: the default, capped
    assert view["timeout_s"] == pool.max_job_timeout_s == 900 - 120 - 60
    wait_until(lambda: pooled.store.get(view["id"]).status is Status.COMPLETED, 10, "the capped job")
    spawner.finish()
    assert spawner.calls == [("default", 0)]


def test_a_job_no_drain_could_finish_fails_instead_of_circling(pooled: Services, tmp_path: Path):
    job = submit(pooled, timeout_s=3_000)  # e.g. queued before the pool's timeout was lowered
    worker = Worker(pooled, InstantComfy(), scratch_dir=tmp_path)
    worker.drain(idle_s=0.2, deadline=time.monotonic() + 600, max_job_s=600)
    failed = pooled.store.get(job.id)
    assert failed.status is Status.FAILED and failed.error.type == "timeout_too_long"


def test_the_floor_keeps_drains_pulling_while_idle(pooled: Services, tmp_path: Path):
    spawner = Spawner(pooled, tmp_path, idle_s=0.1)
    assert spawner.wakeups.wake_all() == {"default": 0, "video": 1}  # nothing queued: only video's floor
    time.sleep(0.5)  # well past idle_s: an ordinary drain would have returned by now
    slot = pooled.store.d.get(keys.drain_slot("video", 0))
    assert slot is not None and slot["state"] == "idle"
    job = submit(pooled, pool="video", timeout_s=1)
    wait_until(lambda: pooled.store.get(job.id).status is Status.COMPLETED, 10, "the floor drain to take it")
    assert spawner.wakeups.wake_all() == {"default": 0, "video": 0}  # the floor is held
    spawner.finish()  # let the floor lapse at its deadline


def test_racing_wakes_claim_each_slot_once(pooled: Services, tmp_path: Path):
    calls: list[Any] = []
    wakeups = Wakeups(pooled.store, lambda pool, slot: calls.append((pool, slot)))
    for _ in range(50):
        submit(pooled)
    threads = [threading.Thread(target=wakeups.wake, args=("default",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [("default", n) for n in range(4)]
    assert wakeups.wake("default") == 0  # spawned drains count until their start grace ends
