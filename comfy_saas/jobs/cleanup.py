"""Retention: everything a job leaves behind is deleted once it is older than the retention period.

- Files (outputs and large inputs) live under a folder per creation day (keys.object_day), so whole days
  are deleted by prefix, without reading any record: a record that expired from the Dict (Modal drops an
  entry 7 days after its last use) can never strand its files.
- Records are deleted by walking the all-jobs index from the oldest slot in parallel batches, stopping at
  the first job that is too young (or, far too old to be, still unfinished); progress is saved after each
  batch, so a run costs O(deleted) and an interrupted one resumes. Running it twice deletes nothing twice.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from datetime import date, datetime, timedelta

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import JobStore

log = logging.getLogger(__name__)

BATCH = 500
FIRST_LOOK_BACK_DAYS = 60  # how far back the first run looks for day folders
BUDGET_S = 3000.0  # Modal gives the daily run an hour


def cleanup(svc: Services, now: datetime | None = None, budget_s: float = BUDGET_S) -> Counter:
    """Delete expired jobs' files and records; counts of what went."""
    now = now or svc.store.clock()
    cutoff = now - timedelta(days=svc.settings.retention_days)
    done: Counter = Counter()
    done["days"], done["outputs"] = _delete_old_days(svc, cutoff.date())
    done["jobs"] = _delete_old_records(svc, cutoff, time.monotonic() + budget_s)
    done = +done  # drop zero counts
    log.info("cleanup: %s", dict(done))
    return done


def _delete_old_days(svc: Services, first_kept: date) -> tuple[int, int]:
    """Delete every day folder before `first_kept` not deleted yet; (days, files)."""
    through = svc.store.state("cleanup_days_through")
    day = date.fromisoformat(through) + timedelta(days=1) if through else first_kept - timedelta(
        days=FIRST_LOOK_BACK_DAYS)
    days = files = 0
    while day < first_kept:
        files += svc.objects.delete_prefix(keys.object_day(datetime(day.year, day.month, day.day)))
        svc.store.save_state("cleanup_days_through", day.isoformat())
        days, day = days + 1, day + timedelta(days=1)
    return days, files


def _delete_old_records(svc: Services, cutoff: datetime, deadline: float) -> int:
    """Walk the index from the oldest slot, deleting finished jobs created before `cutoff`; how many.
    Each batch costs a few round trips: its slots, its records, the deletions together, the mark."""
    store, deleted = svc.store, 0
    while time.monotonic() < deadline:
        low = store.state("cleanup_low", 1)
        numbers = list(range(low, min(store.index.head(keys.ALL), low + BATCH - 1) + 1))
        if not numbers:
            break
        jobs = store.get_many(store.index.slots(keys.ALL, numbers), live=False)
        doomed = list(itertools.takewhile(lambda nj: nj[1] is None or (nj[1].terminal and nj[1].created_at <= cutoff),
                                          zip(numbers, jobs, strict=True)))
        run_all([lambda n=n, j=j: _delete(store, n, j) for n, j in doomed])
        deleted += sum(1 for _, j in doomed if j is not None)
        if doomed:
            store.save_state("cleanup_low", doomed[-1][0] + 1)
        if len(doomed) < len(numbers):
            break  # reached a job that is too young (or still running)
    return deleted


def _delete(store: JobStore, n: int, job: Job | None) -> None:
    if job is not None:
        store.delete_job(job)  # with its slots in every scope it was listed in
    if job is None or job.index_slots.get(keys.ALL) != n:  # records older than index_slots
        store.index.remove(keys.ALL, n)
