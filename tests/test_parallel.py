"""Batched store calls: concurrent once a backend is a network round trip (a batch started inside another
batch's call still sends its calls together); one after another in the caller while every backend is local."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from comfy_saas.backends import parallel
from comfy_saas.backends.parallel import batches_run_concurrently, run_all, submit
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile
from comfy_saas.config import Settings
from comfy_saas.jobs.services import Services


@pytest.fixture
def concurrent(monkeypatch):
    monkeypatch.setattr(parallel, "_concurrent", threading.Event())
    parallel.calls_are_round_trips()


@pytest.fixture
def local_only(monkeypatch):
    monkeypatch.setattr(parallel, "_concurrent", threading.Event())


def test_a_batch_inside_a_batched_call_runs_its_calls_together(concurrent):
    # Each inner call waits for all its siblings: run one after another, they would break the barrier.
    barriers = [threading.Barrier(3, timeout=10) for _ in range(2)]
    outer = run_all([lambda b=b: run_all([b.wait] * 3) for b in barriers])
    assert [sorted(inner) for inner in outer] == [[0, 1, 2], [0, 1, 2]]


def test_batches_nested_three_deep_still_run_together(concurrent):
    barrier = threading.Barrier(2, timeout=10)
    deepest = lambda: run_all([barrier.wait] * 2)  # noqa: E731
    got = run_all([lambda: run_all([lambda: run_all([deepest, lambda: None]), lambda: None]), lambda: None])
    assert sorted(got[0][0][0]) == [0, 1]


def test_a_background_call_can_batch_and_be_waited_for_from_a_batched_call(concurrent):
    background = submit(lambda: run_all([lambda: 1, lambda: 2]))
    inner, other = run_all([lambda: background.result(timeout=10), lambda: "other"])
    assert inner == [1, 2] and other == "other"


def test_with_local_backends_a_batch_runs_every_call_in_the_caller_then_raises_the_first_error(local_only):
    ran: list[tuple[int, str]] = []

    def call(n: int, fail: bool = False) -> int:
        ran.append((n, threading.current_thread().name))
        if fail:
            raise ValueError(f"call {n}")
        return n

    assert run_all([lambda: call(1), lambda: call(2)]) == [1, 2]
    with pytest.raises(ValueError, match="call 3"):
        run_all([lambda: call(3, fail=True), lambda: call(4), lambda: call(5, fail=True)])
    assert ran == [(n, threading.current_thread().name) for n in (1, 2, 3, 4, 5)]


def test_with_local_backends_a_background_call_is_done_at_once(local_only):
    done = submit(lambda: 7)
    failed = submit(lambda: 1 / 0)
    assert done.done() and done.result() == 7
    assert isinstance(failed.exception(), ZeroDivisionError)


def test_services_over_a_round_trip_backend_make_batches_concurrent(local_only, tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    db = tmp_path / "state.sqlite3"
    Services.over(LocalDict(db), LocalQueue(db), settings)
    assert not batches_run_concurrently()  # SQLite and files on this machine
    modal = Profile.modal(rpc_ms=1)
    Services.over(LocalDict(db, profile=modal), LocalQueue(db, profile=modal), settings)
    assert batches_run_concurrently()


def test_services_over_backends_that_do_not_say_are_taken_for_round_trips(local_only, tmp_path: Path):
    class Remote:  # as modal.Dict and modal.Queue: nothing says their calls are local
        pass

    Services.over(Remote(), Remote(), Settings(data_dir=tmp_path))
    assert batches_run_concurrently()
