"""Batched store calls: a batch started inside another batch's call still sends its calls together."""

from __future__ import annotations

import threading

from comfy_saas.backends.parallel import run_all, submit


def test_a_batch_inside_a_batched_call_runs_its_calls_together():
    # Each inner call waits for all its siblings: run one after another, they would break the barrier.
    barriers = [threading.Barrier(3, timeout=10) for _ in range(2)]
    outer = run_all([lambda b=b: run_all([b.wait] * 3) for b in barriers])
    assert [sorted(inner) for inner in outer] == [[0, 1, 2], [0, 1, 2]]


def test_batches_nested_three_deep_still_run_together():
    barrier = threading.Barrier(2, timeout=10)
    deepest = lambda: run_all([barrier.wait] * 2)  # noqa: E731
    got = run_all([lambda: run_all([lambda: run_all([deepest, lambda: None]), lambda: None]), lambda: None])
    assert sorted(got[0][0][0]) == [0, 1]


def test_a_background_call_can_batch_and_be_waited_for_from_a_batched_call():
    background = submit(lambda: run_all([lambda: 1, lambda: 2]))
    inner, other = run_all([lambda: background.result(timeout=10), lambda: "other"])
    assert inner == [1, 2] and other == "other"
