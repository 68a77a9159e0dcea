"""Daily cleanup: delete finished jobs older than the retention period, and everything kept for them.

It walks the index from the oldest slot in bounded batches and stops at the first job that is too
young or still unfinished, so a run costs O(deleted). Running it twice deletes nothing twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from models import utcnow
from object_store import ObjectStore
from settings import Settings
from storage import JobStore, Keys

log = logging.getLogger(__name__)


def cleanup(store: JobStore, objects: ObjectStore, settings: Settings, now: datetime | None = None,
            batch: int = 500, max_batches: int = 200) -> Counter:
    """Delete expired jobs, their outputs, flags and index entries; counts of what went."""
    cutoff = (now or utcnow()) - timedelta(days=settings.retention_days)
    done: Counter = Counter()
    for _ in range(max_batches):
        slots = store.oldest(batch)
        if not slots:
            break
        for n, job in slots:
            if job is not None and (not job.terminal or job.created_at > cutoff):
                log.info("cleanup: %s", dict(done))
                return done
            if job is not None:
                done["outputs"] += objects.delete_prefix(Keys.output_prefix(job.id))
                done["jobs"] += 1
            store.delete_job(n, job)
    log.info("cleanup: %s", dict(done))
    return done
