"""The sweeper's own list of the jobs it must keep an eye on: every unfinished job, and finished ones whose
webhook is still pending. It is what lets a sweep cost O(active jobs), never O(stored jobs).

New jobs join by ingestion: the sweeper reads the all-jobs index from where it stopped (job ids only).
The list is kept in chunks under a generation; a run writes a new generation, then flips one pointer
(`maint:sweep`), so a crashed run leaves the previous list intact and two racing sweepers never mix theirs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys
from comfy_saas.jobs.deliveries import settled
from comfy_saas.jobs.store import JobStore

CHUNK = 1_000
MAX_INGEST = 50_000  # index slots read per run at most; the rest next run


@dataclass
class Entry:
    """One watched job: its id, when the sweeper last re-sent its wake-up, whether only its webhook is left."""

    job_id: str
    resent_at: float = 0.0
    hook_only: bool = False

    def to_list(self) -> list[Any]:
        return [self.job_id, self.resent_at, self.hook_only]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Entry:
        return cls(raw[0], float(raw[1]), bool(raw[2]))


@dataclass
class WatchList:
    entries: list[Entry] = field(default_factory=list)
    ingested: int = 0  # the all-jobs index slot this list has read up to
    gen: str = ""
    chunks: int = 0


def load(store: JobStore) -> WatchList:
    """The current list (two round trips)."""
    pointer = store.state("sweep") or {}
    gen, count = pointer.get("gen", ""), int(pointer.get("chunks", 0))
    chunks = run_all([lambda i=i: store.state(f"watch:{gen}:{i}") or [] for i in range(count)])
    entries = [Entry.from_list(raw) for chunk in chunks for raw in chunk]
    return WatchList(entries, int(pointer.get("ingested", 0)), gen, count)


def ingest(store: JobStore, watch: WatchList) -> int:
    """Add the jobs created since the list last looked (ids only, MAX_INGEST at most); how many."""
    head = store.index.head(keys.ALL)
    end = min(head, watch.ingested + MAX_INGEST)
    numbers = list(range(watch.ingested + 1, end + 1))
    ids = store.index.slots(keys.ALL, numbers)
    known = {e.job_id for e in watch.entries}
    fresh = [Entry(job_id) for job_id in dict.fromkeys(i for i in ids if i and i not in known)]
    watch.entries += fresh
    watch.ingested = end
    return len(fresh)


def save(store: JobStore, watch: WatchList) -> None:
    """Write the list as a new generation, flip the pointer, drop the old generation (three round trips)."""
    gen = uuid.uuid4().hex[:12]
    chunks = [watch.entries[i:i + CHUNK] for i in range(0, len(watch.entries), CHUNK)]
    run_all([lambda i=i, c=c: store.save_state(f"watch:{gen}:{i}", [e.to_list() for e in c])
             for i, c in enumerate(chunks)])
    store.save_state("sweep", {"gen": gen, "chunks": len(chunks), "ingested": watch.ingested})
    run_all([lambda i=i: store.d.pop(keys.maintenance(f"watch:{watch.gen}:{i}"), None)
             for i in range(watch.chunks)])
    watch.gen, watch.chunks = gen, len(chunks)


def pending_deliveries(store: JobStore) -> list[dict[str, Any]]:
    """The webhook deliveries still pending among watched jobs: what the dispatcher retries (three round
    trips, whatever the number of stored jobs)."""
    watch = load(store)
    deliveries = store.webhooks([e.job_id for e in watch.entries if e.hook_only])
    return [d for d in deliveries if not settled(d)]
