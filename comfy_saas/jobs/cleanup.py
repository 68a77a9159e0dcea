"""Daily cleanup: delete finished jobs older than the retention period, and everything kept for them.

It walks the index from the oldest slot in bounded batches and stops at the first job that is too
young or still unfinished, so a run costs O(deleted). Running it twice deletes nothing twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from comfy_saas.jobs import keys
from comfy_saas.jobs.model import utcnow
from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)


def cleanup(svc: Services, now: datetime | None = None, batch: int = 500, max_batches: int = 200) -> Counter:
    """Delete expired jobs, their outputs, flags and index entries; counts of what went."""
    cutoff = (now or utcnow()) - timedelta(days=svc.settings.retention_days)
    store = svc.store
    done: Counter = Counter()
    for _ in range(max_batches):
        low = store.state("cleanup_low", 1)
        numbers = list(range(low, min(store.index.head(keys.ALL), low + batch - 1) + 1))
        if not numbers:
            break
        for n, job in zip(numbers, store.get_many(store.index.slots(keys.ALL, numbers)), strict=True):
            if job is not None and (not job.terminal or job.created_at > cutoff):
                log.info("cleanup: %s", dict(done))
                return done
            if job is not None:
                done["outputs"] += svc.objects.delete_prefix(keys.object_prefix(job.id, job.created_at))
                store.delete_job(job)
                done["jobs"] += 1
            store.index.remove(keys.ALL, n)
            store.save_state("cleanup_low", n + 1)
    log.info("cleanup: %s", dict(done))
    return done
