"""The counters behind /metrics: one shard per process, a fresh shard after a long idle spell, and the sweeper
folding idle shards into one rolled-up total. What a scrape shows never changes by folding, nothing is
counted twice, and a scrape reads only the shards still in use."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from comfy_saas.jobs import keys, rollup
from comfy_saas.jobs.counters import FOLD_AFTER_S, ROTATE_AFTER_S, Counters
from comfy_saas.jobs.model import Status
from comfy_saas.jobs.services import Services
from comfy_saas.web import metrics


class Process:
    """Another process counting moves into the same store (a container, say), on a clock of its own."""

    def __init__(self, svc: Services) -> None:
        self.svc, self.now = svc, 0.0
        self.counters = Counters(clock=lambda: self.now)

    def count(self, n: int) -> None:
        for _ in range(n):
            self.counters.moved(None, Status.QUEUED, "default")
        self.svc.store.save_counters(self.counters)

    def idle(self, seconds: float) -> None:
        self.now += seconds


def queued_total(svc: Services) -> float:
    return metrics.totals(svc)["entered|queued|default"]


def live_shards(svc: Services) -> list[str]:
    """The shards a scrape reads, other than the scraping process's own."""
    own = svc.lifecycle.counters.shard
    return [name for name, shard in svc.store.counter_registry().shards.items() if shard and name != own]


def test_folding_idle_shards_keeps_the_totals_and_empties_what_a_scrape_reads(svc: Services):
    a, b = Process(svc), Process(svc)
    a.count(3)
    b.count(4)
    assert queued_total(svc) == 7 and len(live_shards(svc)) == 2
    assert rollup.fold_idle_shards(svc.store, time.time() + 60) == 0  # not idle long enough
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 2
    assert queued_total(svc) == 7
    assert svc.store.counter_registry().slots == {}  # the registry's low mark moved past both
    assert svc.store.d.get(keys.metrics_shard(a.counters.shard)) is None
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 0
    assert queued_total(svc) == 7


def test_a_process_idle_for_long_counts_on_in_a_fresh_shard_so_a_fold_never_counts_twice(svc: Services):
    p = Process(svc)
    p.count(2)
    first = p.counters.shard
    p.idle(ROTATE_AFTER_S + 1)
    p.count(1)  # written to a fresh shard: the first one stays as it was, for the sweeper
    assert p.counters.shard != first and queued_total(svc) == 3
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 2  # both look idle by now
    p.idle(FOLD_AFTER_S + 1)  # and the process has been idle as long
    p.count(1)
    assert queued_total(svc) == 4
    new = Process(svc)
    new.count(1)
    assert queued_total(svc) == 5 and len(live_shards(svc)) == 2  # only the live shards are read


def test_two_sweepers_folding_at_once_add_each_shard_once(svc: Services):
    for n in range(1, 6):
        Process(svc).count(n)
    barrier = threading.Barrier(2)

    def fold(_: int) -> int:
        barrier.wait()
        return rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1)

    with ThreadPoolExecutor(2) as pool:
        assert sum(pool.map(fold, range(2))) == 5
    assert queued_total(svc) == 15
    assert svc.store.state("metrics_rollup")["counts"]["entered|queued|default"] == 15


def test_a_scraping_process_whose_own_shard_was_folded_counts_itself_once(svc: Services):
    clock = [0.0]
    svc.lifecycle.counters.clock = lambda: clock[0]
    svc.lifecycle.counters.moved(None, Status.QUEUED, "default")
    assert queued_total(svc) == 1  # its own shard is written as it scrapes
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 1
    assert queued_total(svc) == 1
    clock[0] += FOLD_AFTER_S + 1
    assert queued_total(svc) == 1  # its next write went to a fresh shard


def test_the_low_mark_waits_for_a_registration_still_on_its_way(svc: Services):
    early, late = Process(svc), Process(svc)
    early.count(1)
    on_its_way = svc.store.index.claim(keys.METRICS, "in-flight", 0)  # claimed, its shard not yet written...
    svc.store.index.remove(keys.METRICS, on_its_way)  # ...nor, as a racing reader saw it, its slot
    late.count(2)
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 2
    assert svc.store.counter_registry().low == on_its_way  # not past the empty slot
    svc.store.d.put(keys.metrics_shard("in-flight"), {"counts": {"entered|queued|default": 4}, "at": time.time()})
    svc.store.d.put(keys.index_slot(keys.METRICS, on_its_way), "in-flight")  # the registration lands
    assert queued_total(svc) == 7


def test_a_shard_registered_twice_is_counted_once(svc: Services):
    p = Process(svc)
    p.count(3)
    svc.store.index.append(keys.METRICS, p.counters.shard)  # a retried registration
    assert queued_total(svc) == 3
    assert rollup.fold_idle_shards(svc.store, time.time() + FOLD_AFTER_S + 1) == 1
    assert queued_total(svc) == 3
