"""Folding idle counter shards into one rolled-up total, so a /metrics scrape reads the shards of live
processes only, however many processes have come and gone (each Modal container counts in its own shard).

A shard idle for FOLD_AFTER_S is never written again (jobs/counters.py). The sweeper adds its counts to
`maint:metrics_rollup` ({"counts", "folded": {name: when}}) in one write, then deletes the shard and moves
the registry's low mark up. A scrape skips shards named in "folded", so a crash
between the two steps counts nothing twice, and the next run finishes the deletion. Only the run holding
`maint:metrics_fold` (won with skip_if_exists) folds, so two sweepers never add the same shard.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys
from comfy_saas.jobs.counters import FOLD_AFTER_S
from comfy_saas.jobs.store import JobStore

FOLDED_KEPT_S = 86_400.0  # a folded shard's name is remembered this long, past any unfinished deletion
LOCK_STALE_S = 300.0  # a fold lock this old belongs to a run that died

Shard = tuple[int, str, dict[str, Any] | None]


def fold_idle_shards(store: JobStore, now: float | None = None) -> int:
    """Fold every counter shard idle for FOLD_AFTER_S (`now`: wall-clock seconds); how many were folded.
    Three round trips when there is nothing to fold."""
    now = time.time() if now is None else now
    _, shards = store.counter_shards()
    if not any(_idle(shard, now) or shard is None for _, _, shard in shards) or not _lock(store, now):
        return 0
    try:
        rollup, shards = store.counter_shards()  # again, under the lock
        folded = dict(rollup.get("folded", {}))
        idle = [(n, name, shard) for n, name, shard in shards if name not in folded and _idle(shard, now)]
        done = [(n, name) for n, name, shard in shards if name in folded or shard is None]
        if idle:
            counts = Counter(rollup.get("counts", {}))
            for _, name, shard in idle:
                counts.update((shard or {}).get("counts", {}))
                folded[name] = now
            kept = {name: at for name, at in folded.items() if now - at < FOLDED_KEPT_S}
            store.save_state("metrics_rollup", {"counts": dict(counts), "folded": kept})
        _drop(store, shards, done + [(n, name) for n, name, _ in idle])
        return len(idle)
    finally:
        store.d.pop(keys.maintenance("metrics_fold"), None)


def _idle(shard: dict[str, Any] | None, now: float) -> bool:
    return shard is not None and now - float(shard.get("at", now)) >= FOLD_AFTER_S


def _lock(store: JobStore, now: float) -> bool:
    """Win the fold lock, taking over one left by a run that died."""
    key = keys.maintenance("metrics_fold")
    if store.d.put(key, {"at": now}, skip_if_exists=True):
        return True
    held = store.d.get(key) or {}
    if now - float(held.get("at", now)) < LOCK_STALE_S:
        return False
    store.d.pop(key, None)
    return store.d.put(key, {"at": now}, skip_if_exists=True)


def _drop(store: JobStore, shards: list[Shard], gone: list[tuple[int, str]]) -> None:
    """Delete folded shards and move the registry's low mark to the lowest slot still in use. Their registry
    slots stay taken (a scrape no longer reads below the mark; unread, they expire), so a slot is never
    handed to a new shard below the mark."""
    if not gone:
        return
    run_all([lambda name=name: store.d.pop(keys.metrics_shard(name), None) for _, name in gone])
    numbers = {n for n, _ in gone}
    live = [n for n, _, _ in shards if n not in numbers]
    store.save_state("metrics_low", min(live) if live else max(numbers) + 1)
