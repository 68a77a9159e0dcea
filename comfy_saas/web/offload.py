"""Where a request's blocking store calls run.

Off the event loop, in the threadpool, when a store call is a network round trip (Modal's Dict, R2, the twins'
Modal profile). In the event loop's own thread when every backend of this process answers from this machine
(the local twins' SQLite, files) and the work is small: such a call is done in tens of microseconds, while
handing it to a thread and back costs about 0.3 ms each way on a VM's vCPUs, most of what answering a status
poll took. The status polls go here (reads of the store and its files, and once an output's small pointer
file), and submissions whose body is small and names no network URL (checking one resolves its host name);
the twins' writers of one process queue on a lock for microseconds rather than sleep in SQLite's busy handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from comfy_saas.backends.parallel import batches_run_concurrently

T = TypeVar("T")

INLINE_BODY_BYTES = 64 * 1024  # a submission this small parses and stores in well under a millisecond


async def store_read(call: Callable[..., T], *args: Any) -> T:
    """call(*args), a read of the store alone: in this thread when the store is local, else in the threadpool."""
    if batches_run_concurrently():
        return await run_in_threadpool(call, *args)
    return call(*args)


async def submission(body: bytes | bytearray, call: Callable[..., T], *args: Any) -> T:
    """call(*args), a submission of `body`: in this thread when the store is local, the body is small and it
    names no network URL; else in the threadpool."""
    if batches_run_concurrently() or len(body) > INLINE_BODY_BYTES or b"://" in body:
        return await run_in_threadpool(call, *args)
    return call(*args)
