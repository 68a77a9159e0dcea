"""Modal's rate limiting, in a deployed container's environment (worker.RUNTIME_ENV): a throttled write waits as
long as Modal asks, so a job whose finish write is throttled completes once; only a spawn has a bound of its own.

The throttled Dict behaves as modal's client does when the server answers RESOURCE_EXHAUSTED with a retry-after
(modal/_utils/grpc_utils.py): with `max_throttle_wait` set (MODAL_MAX_THROTTLE_WAIT) and the wait asked for at or
above it, the call raises ResourceExhaustedError at once; otherwise the client waits it out and the call lands
(here the wait is only counted, not slept).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import modal
import modal.exception
import pytest
from conftest import submit, wait_until

from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Status
from comfy_saas.jobs.services import Services
from comfy_saas.modal_runtime import bounded, wakeups
from comfy_saas.runner.comfy_process import ComfyProcess
from comfy_saas.runner.worker import Worker

THROTTLE_S = 6.0  # what the server asks a throttled call to wait
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


class ThrottledDict:
    """A Dict twin whose first write of a job's final outcome (the finish) is throttled by the server."""

    def __init__(self, inner: LocalDict) -> None:
        self.inner = inner
        self.refused = 0
        self.waited_s = 0.0
        self._throttled_once = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: Any, value: Any, **kwargs: Any) -> bool:
        if self._is_finish(key, value) and not self._throttled_once:
            cap = modal.config.config.get("max_throttle_wait")  # read live from the environment, as modal does
            if cap is not None and cap <= THROTTLE_S:
                self.refused += 1  # the server keeps throttling while the caller retries: refused each time
                raise modal.exception.ResourceExhaustedError("throttled: retry after 6s")
            self._throttled_once, self.waited_s = True, self.waited_s + THROTTLE_S
        return self.inner.put(key, value, **kwargs)

    @staticmethod
    def _is_finish(key: Any, value: Any) -> bool:
        outcome = value.get("outcome") if isinstance(value, dict) else None
        return str(key).startswith("claim:") and isinstance(outcome, dict) and outcome.get("status") == "completed"


@pytest.fixture
def deployed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal's client settings of a deployed container: exactly the MODAL_* variables worker.py gives it."""
    import worker

    monkeypatch.delenv("MODAL_MAX_THROTTLE_WAIT", raising=False)
    for name, value in worker.RUNTIME_ENV.items():
        if name.startswith("MODAL_"):
            monkeypatch.setenv(name, value)


def test_a_throttled_finish_write_waits_and_the_job_runs_once(deployed_env: None, db_path: Path,
                                                              settings: Settings, double: ComfyProcess):
    jobs = ThrottledDict(LocalDict(db_path))
    svc = Services.over(jobs, LocalQueue(db_path), settings)
    job = submit(svc, workflow=WORKFLOW)
    stop = threading.Event()
    worker = Worker(svc, double.client)
    thread = threading.Thread(target=worker.run, args=(stop, 0.2), daemon=True)
    thread.start()
    try:
        done = wait_until(lambda: (j := svc.store.get(job.id)) is not None and j.terminal and j, 60, "the job")
    finally:
        stop.set()
        thread.join(30)
    assert (done.status, done.attempts) == (Status.COMPLETED, 1), done.error
    assert (jobs.refused, jobs.waited_s) == (0, THROTTLE_S)  # the write waited Modal out instead of failing


def test_a_spawn_modal_keeps_throttling_is_cancelled_at_its_bound():
    cancelled = threading.Event()

    async def throttled_spawn() -> None:
        try:
            await asyncio.Event().wait()  # Modal never lets it through
        except asyncio.CancelledError:
            cancelled.set()  # nothing lands after the caller gave up
            raise

    with pytest.raises(TimeoutError):
        bounded(throttled_spawn, 0.2)
    assert cancelled.is_set()


def test_bounded_runs_from_inside_an_event_loop_too():
    async def spawn() -> str:
        return "spawned"

    async def handler() -> str:  # a web handler's thread runs a loop already
        return bounded(spawn, 5)

    assert asyncio.run(handler()) == "spawned"


def test_a_timed_out_spawn_is_retried_then_its_slot_given_back(svc: Services):
    calls: list[tuple[str, int]] = []

    def spawn(pool: str, slot: int) -> None:
        calls.append((pool, slot))
        raise TimeoutError("spawn throttled past its bound")

    component = wakeups(svc, spawn)
    submit(svc)
    calls.clear()  # whether the submission woke the pool itself or not, wake it now: one drain is needed
    assert component.wake("default") == 0
    assert len(calls) == 1 + len(component.delays)  # backed off and retried, as for Modal's own rate-limit error
    assert svc.store.d.get(keys.drain_slot("default", 0)) is None  # the claimed slot was handed back
