"""Wait mode: `?wait=N` holds a request until the job ends or N seconds pass.

Waiting is async: between store reads the request sleeps on the event loop, so a waiter holds no thread.
Each poll is one Dict read of the job record, every 0.25 s at first and backing off to once a second, so
a 30 s wait costs about 35 reads; a finished record is shown as it is, with no further read. A record
written by this process (the local stack's workers) ends the sleep at once (jobs/changes.py).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from starlette.concurrency import run_in_threadpool

from comfy_saas.errors import InvalidInput
from comfy_saas.jobs import changes, keys
from comfy_saas.jobs.model import TERMINAL_STATUSES, Job
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.views import job_view

FIRST_POLL_S = 0.25
MAX_POLL_S = 1.0
BACKOFF = 1.5


def parse_wait(raw: str | None, cap_s: float) -> float | None:
    """Seconds to wait from `?wait=N` (None when absent); 422 naming the cap when above it."""
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput("wait must be a number of seconds", field="wait") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput("wait must be a number of seconds, 0 or more", field="wait")
    if seconds > cap_s:
        raise InvalidInput(f"wait must be at most {cap_s:g} seconds (the cap, below the endpoint timeout); poll "
                           f"GET /v1/jobs/{{id}}?wait=N for longer", field="wait")
    return seconds


async def until_finished(svc: Services, job_id: str, wait_s: float) -> tuple[dict[str, Any] | None, bool]:
    """(the job's view, whether it has finished) once it ends or wait_s pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = FIRST_POLL_S
    with changes.watch(job_id) as news:  # a record written by this process wakes the wait at once
        while True:
            record = await run_in_threadpool(svc.store.d.get, keys.job(job_id))
            if record is not None and record.get("status") in TERMINAL_STATUSES:
                return await run_in_threadpool(job_view, svc, Job.model_validate(record)), True
            remaining = deadline - loop.time()
            if record is None or remaining <= 0:
                break
            if not await news.wait(min(delay, remaining)):
                delay = min(delay * BACKOFF, MAX_POLL_S)
    job = await run_in_threadpool(svc.store.get, job_id)  # with the running attempt's progress
    return (None if job is None else await run_in_threadpool(job_view, svc, job)), False
