"""Where a request's blocking store reads run.

Off the event loop, in the threadpool, when a store call is a network round trip (Modal's Dict, R2, the twins'
Modal profile). In the event loop's own thread when every backend of this process answers from this machine
(the local twins' SQLite, files): such a read is done in tens of microseconds, while handing it to a thread and
back costs about 0.3 ms each way on a VM's vCPUs, most of what answering a status poll took. Only the status
polls go here: reads of the store and its files (and, once, an output's small pointer file). A submission may
resolve host names and wait for SQLite's write lock, so it keeps to the threadpool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from comfy_saas.backends.parallel import batches_run_concurrently

T = TypeVar("T")


async def store_read(call: Callable[..., T], *args: Any) -> T:
    """call(*args), a read of the store alone: in this thread when the store is local, else in the threadpool."""
    if batches_run_concurrently():
        return await run_in_threadpool(call, *args)
    return call(*args)
