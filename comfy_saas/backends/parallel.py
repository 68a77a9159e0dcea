"""Independent Dict/Queue calls sent together, so a batch costs one round trip instead of one per call.

On Modal every call is a network round trip of a few dozen milliseconds; the local twins in their
Modal profile add the same latency. Both are safe to call from many threads (Modal's synchronous API
runs on its own event loop), so one bounded thread pool serves both homes.

A process whose backends answer without a round trip (the local twins in their local profile, files on
disk) runs each batch in the calling thread instead: such a call takes tens of microseconds, and handing it
to a pool thread and back costs ten times that, which was most of a local submit's time. The first backend
that does cross a network (`calls_are_round_trips`) makes every later batch in the process concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

MAX_IN_FLIGHT = 128  # concurrent calls per process and level; Modal multiplexes them over one connection

# A batch started inside a batched call (a store method that batches its own calls, run beside others) runs
# on the next level's pool, so it still costs one round trip; a level's threads only ever wait on the levels
# below, so no pool waits on itself. Batches nested deeper than LEVELS run inline.
LEVELS = 4
_BACKGROUND = LEVELS + 1  # fire-and-forget calls run their batches inline: threads of any level may wait on them
_pools: dict[int, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()
_local = threading.local()
_concurrent = threading.Event()  # set once this process uses a backend whose calls are round trips


def calls_are_round_trips() -> None:
    """This process talks to a backend across a network: from now on batches run concurrently."""
    _concurrent.set()


def batches_run_concurrently() -> bool:
    """Whether a batch started now runs its calls concurrently (else one after another, in the caller)."""
    return _concurrent.is_set()


def _set_level(level: int) -> None:
    _local.level = level


def _executor(level: int) -> ThreadPoolExecutor:
    """The pool whose threads run at `level` (1 for batches started outside any, and so on)."""
    with _pool_lock:
        if level not in _pools:
            name = "store-bg" if level == _BACKGROUND else f"store-call-{level}"
            _pools[level] = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix=name, initializer=_set_level,
                                               initargs=(level,))
        return _pools[level]


def _level() -> int:
    """How deep in batches the calling thread runs: 0 outside any, 1 in a batched call, and so on."""
    return getattr(_local, "level", 0)


def run_all(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls (concurrently once calls are round trips) and return their results in order; the first
    error is raised after all have finished, so no call is left running behind the caller's back. The batch
    costs one round trip (up to MAX_IN_FLIGHT calls at a time), also when started inside another batch's call."""
    level = _level()
    if len(calls) <= 1 or level >= LEVELS or not _concurrent.is_set():
        return _settled(calls)
    pool = _executor(level + 1)
    return _settled([pool.submit(call).result for call in calls])


def _settled(results: Sequence[Callable[[], T]]) -> list[T]:
    """Each result in order; the first error is raised once every one has been asked for."""
    out: list[Any] = []
    first_error: BaseException | None = None
    for result in results:
        try:
            out.append(result())
        except BaseException as exc:  # re-raised below, after every call has settled
            out.append(None)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return out


def map_all(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """fn over items concurrently, results in order."""
    return run_all([lambda item=item: fn(item) for item in items])


def submit(call: Callable[[], T]) -> Future:
    """Run one call in the background (once calls are round trips; until then at once, in this thread); its
    Future."""
    if _concurrent.is_set():
        return _executor(_BACKGROUND).submit(call)
    done: Future = Future()
    try:
        done.set_result(call())
    except BaseException as exc:  # kept for whoever asks the Future, as the background thread would
        done.set_exception(exc)
    return done


def settle_all(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
    """Like run_all, but every call's error is returned in its place instead of raised, so a caller can
    undo what the other calls did."""
    def capture(call: Callable[[], T]) -> T | BaseException:
        try:
            return call()
        except Exception as exc:
            return exc
    return run_all([lambda call=call: capture(call) for call in calls])
