"""Independent Dict/Queue calls sent together, so a batch costs one round trip instead of one per call.

On Modal every call is a network round trip of a few dozen milliseconds; the local twins in their
Modal profile add the same latency. Both are safe to call from many threads (Modal's synchronous API
runs on its own event loop), so one bounded thread pool serves both homes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

MAX_IN_FLIGHT = 128  # concurrent calls per process; Modal multiplexes them over one connection

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="store-call")
        return _pool


def run_all(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls concurrently and return their results in order; the first error is raised after all
    have finished, so no call is left running behind the caller's back. The batch costs one round trip
    (up to MAX_IN_FLIGHT calls at a time)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    if threading.current_thread().name.startswith("store-call"):
        return [call() for call in calls]  # nested batches run inline: a full pool must never wait on itself
    futures = [_executor().submit(call) for call in calls]
    results, first_error = [], None
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # re-raised below, after every call has settled
            results.append(None)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def map_all(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """fn over items concurrently, results in order."""
    return run_all([lambda item=item: fn(item) for item in items])


def submit(call: Callable[[], T]) -> Future:
    """Run one call in the background; its Future."""
    return _executor().submit(call)


def settle_all(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
    """Like run_all, but every call's error is returned in its place instead of raised, so a caller can
    undo what the other calls did."""
    def capture(call: Callable[[], T]) -> T | BaseException:
        try:
            return call()
        except Exception as exc:
            return exc
    return run_all([lambda call=call: capture(call) for call in calls])
