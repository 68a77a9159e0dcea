"""Folding idle counter shards into one rolled-up total, so a /metrics scrape reads the shards of live
processes only, however many processes have come and gone (each Modal container counts in its own shard).

A shard idle for FOLD_AFTER_S is never written again (jobs/counters.py). The sweeper adds its counts to
`maint:metrics_rollup` ({"counts", "folded": {name: when}, "gaps": {slot: first seen}}) in one write, then
deletes the shard and moves the registry's low mark up. A scrape skips shards named in "folded", so a crash
between the two steps counts nothing twice, and the next run finishes the deletion. Only the run holding
`maint:metrics_fold` folds, so two sweepers never add the same shard.

The low mark moves only through slots that are folded, or empty for GAP_GRACE_S: a slot read empty below a
taken one may be a registration still on its way, and a scrape must never skip a live shard.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import held_keys, keys
from comfy_saas.jobs.counters import FOLD_AFTER_S
from comfy_saas.jobs.store import CounterRegistry, JobStore

FOLDED_KEPT_S = 86_400.0  # a folded shard's name is remembered this long, past any unfinished deletion
GAP_GRACE_S = 600.0  # an empty registry slot below a taken one is a crashed registration after this long
LOCK_STALE_S = 300.0  # a fold lock this old belongs to a run that died (a sweep ends within a minute)


def fold_idle_shards(store: JobStore, now: float | None = None) -> int:
    """Fold every counter shard idle for FOLD_AFTER_S (`now`: wall-clock seconds); how many were folded.
    Three round trips when there is nothing to fold."""
    now = time.time() if now is None else now
    if not _work(store.counter_registry(), now):
        return 0
    nonce = uuid.uuid4().hex
    if not _lock(store, now, nonce):
        return 0
    try:
        registry = store.counter_registry()  # again, under the lock
        idle = [name for name, shard in registry.shards.items()
                if name not in registry.rollup.get("folded", {}) and _idle(shard, now)]
        rollup = _folded(registry, idle, now)
        store.save_state("metrics_rollup", rollup)
        run_all([lambda name=name: store.d.pop(keys.metrics_shard(name), None)
                 for name in rollup["folded"] if name in registry.shards])
        store.save_state("metrics_low", _new_low(registry, set(rollup["folded"]), rollup["gaps"], now))
        return len(idle)
    finally:
        _unlock(store, nonce)


def _work(registry: CounterRegistry, now: float) -> bool:
    """Whether a fold would change anything: an idle shard, a folded or deleted one, or an empty slot."""
    folded = registry.rollup.get("folded", {})
    return any(name is None or name in folded or registry.shards.get(name) is None
               or _idle(registry.shards.get(name), now) for name in registry.slots.values())


def _idle(shard: dict[str, Any] | None, now: float) -> bool:
    return shard is not None and now - float(shard.get("at", now)) >= FOLD_AFTER_S


def _folded(registry: CounterRegistry, idle: list[str], now: float) -> dict[str, Any]:
    """The rollup with the idle shards added, old folded names forgotten and empty slots' first sightings."""
    counts = Counter(registry.rollup.get("counts", {}))
    folded = dict(registry.rollup.get("folded", {}))
    for name in idle:
        counts.update((registry.shards.get(name) or {}).get("counts", {}))
        folded[name] = now
    gaps = registry.rollup.get("gaps", {})
    seen = {str(n): gaps.get(str(n), now) for n, name in registry.slots.items() if name is None}
    return {"counts": dict(counts), "folded": {k: t for k, t in folded.items() if now - t < FOLDED_KEPT_S},
            "gaps": seen}


def _new_low(registry: CounterRegistry, folded: set[str], gaps: dict[str, float], now: float) -> int:
    """The first slot from the low mark that holds a live shard, or is empty but recently so."""
    n = registry.low
    for n, name in sorted(registry.slots.items()):
        gone = name in folded or (name is not None and registry.shards.get(name) is None)
        stale_gap = name is None and now - gaps.get(str(n), now) >= GAP_GRACE_S
        if not (gone or stale_gap):
            return n
    return max(registry.slots, default=n - 1) + 1


def _lock(store: JobStore, now: float, nonce: str) -> bool:
    """Win the fold lock, taking over one left by a run that died: the lock is a held key
    (backends/held_keys.py), so of the runs finding it stale, and the dead run's own late unlock, one wins."""
    key = keys.maintenance("metrics_fold")
    mine = {"at": now, "nonce": nonce, "token": nonce}
    if store.d.put(key, mine, skip_if_exists=True):
        return True
    held = store.d.get(key)
    if held_keys.token_of(held) == nonce:
        return True  # our own write, reported lost by a retried call
    if held is None or now - float(held.get("at", now)) < LOCK_STALE_S:
        return False  # freed meanwhile (the next run takes it), or a live run's lock
    return held_keys.replace(store.d, key, held, mine, now)


def _unlock(store: JobStore, nonce: str) -> None:
    held_keys.release(store.d, keys.maintenance("metrics_fold"), nonce)
