"""Process-local news that a job's record was written, so a request waiting on the job (`?wait=N`, a long
poll) reads it at once instead of at its next poll. Writes by other processes (on Modal the API and the
workers are separate containers) are still found by polling: this only takes out the sleep where the writer
and the waiter share a process, as in the local stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

_lock = threading.Lock()
_watchers: dict[str, set[Callable[[], None]]] = {}


def announce(job_id: str) -> None:
    """This process just wrote the job's record: wake whoever watches it here."""
    with _lock:
        wakes = list(_watchers.get(job_id, ()))
    for wake in wakes:
        wake()


class News:
    """One watcher's news of a job, from the moment it started watching (so no write is missed between a read
    and the wait that follows it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> bool:
        """Sleep up to timeout_s, or until the job's record is written here (at once if it was since the last
        wait); True when it was."""
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        self._event.clear()
        return True


@contextlib.contextmanager
def watch(job_id: str) -> Iterator[News]:
    """Watch one job from the running event loop for the length of the block."""
    news = News(asyncio.get_running_loop())
    with _lock:
        _watchers.setdefault(job_id, set()).add(news.wake)
    try:
        yield news
    finally:
        with _lock:
            left = _watchers.get(job_id, set())
            left.discard(news.wake)
            if not left:
                _watchers.pop(job_id, None)
