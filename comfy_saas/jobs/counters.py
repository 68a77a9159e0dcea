"""Counts kept as jobs move, so /metrics reads a few small values instead of scanning jobs.

Each process counts in memory (one `Counters` per Services) and writes its totals as one shard,
`metrics:{shard}`, at most every FLUSH_EVERY_S, off the caller's path. A scrape sums the registered
shards; the sweeper folds shards of processes long gone into one rolled-up total. Dict has no atomic
increment, so every shard has exactly one writer: the process that counts it.

A process whose shard has not been written for ROTATE_AFTER_S, or was registered MAX_SHARD_AGE_S ago, leaves
it as it is and goes on in a fresh shard holding only what it counted since. So a shard idle for longer than
ROTATE_AFTER_S is never written again, and the sweeper (jobs/rollup.py) may fold one idle for FOLD_AFTER_S
without racing its writer; and no shard stays in use long enough to pin the registry's low mark.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from comfy_saas.jobs.model import ACTIVE_STATUSES, Job, Status

FLUSH_EVERY_S = 2.0
ROTATE_AFTER_S = 600.0
MAX_SHARD_AGE_S = 3_600.0
FOLD_AFTER_S = 1_800.0  # well past ROTATE_AFTER_S, so differing clocks cannot make a fold race a write
BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PHASES = ("queue_wait", "prepare", "execute", "upload", "finish", "total")


class Counters:
    """This process's counts: moves into and out of each status (per pool), phase times of finished jobs,
    webhook outcomes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.shard = _shard_name()
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._written: Counter = Counter()  # the counts as the current shard was last written
        self._version = 0
        self._flushed_version = 0
        self._last_flush = 0.0
        self._registered_at = 0.0
        self.registered = False
        self.flushing = threading.Lock()  # one write of this shard at a time, so none lands out of order

    def moved(self, source: Status | None, target: Status, pool: str = "") -> None:
        """A job moved from `source` (None for a new job) to `target`."""
        with self._lock:
            self._counts[f"entered|{target.value}|{pool}"] += 1
            if source is not None:
                self._counts[f"left|{source.value}|{pool}"] += 1
            self._version += 1

    def finished(self, job: Job) -> None:
        """Phase times of a finished job into the histograms."""
        if job.timings is None:
            return
        with self._lock:
            for phase in PHASES:
                seconds = getattr(job.timings, f"{phase}_ms") / 1000
                self._counts[f"phase_count|{phase}"] += 1
                self._counts[f"phase_sum|{phase}"] += seconds
                for le in BUCKETS_S:
                    if seconds <= le:
                        self._counts[f"phase_le|{phase}|{le}"] += 1
            self._version += 1

    def delivery(self, state: str, ok: bool) -> None:
        """One webhook attempt, and the delivery's state after it."""
        with self._lock:
            self._counts[f"attempt|{'success' if ok else 'error'}"] += 1
            if state != "pending":
                self._counts[f"delivery|{state}"] += 1
            self._version += 1

    def due(self, now: float | None = None) -> bool:
        """Whether there are counts not yet written and the last write is old enough."""
        now = self.clock() if now is None else now
        return self._version != self._flushed_version and now - self._last_flush >= FLUSH_EVERY_S

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            return self._version, {"counts": dict(self._counts), "at": time.time()}

    def flushed(self, version: int, counts: dict[str, Any]) -> None:
        """The shard was written with `counts` (the snapshot of `version`)."""
        with self._lock:
            if version >= self._flushed_version:
                self._written = Counter(counts)
            self._flushed_version, self._last_flush = max(self._flushed_version, version), self.clock()

    def mark_registered(self) -> None:
        with self._lock:
            self.registered, self._registered_at = True, self.clock()

    def written(self) -> tuple[str, Counter]:
        """(the current shard, the counts it was last written with), taken together."""
        with self._lock:
            return self.shard, Counter(self._written)

    def rotate_if_due(self) -> bool:
        """Before a write: when the shard was last written ROTATE_AFTER_S ago or more, or registered
        MAX_SHARD_AGE_S ago, leave it to the sweeper and go on in a fresh one with only the counts made since.
        Whether it rotated."""
        with self._lock:
            now = self.clock()
            if not self.registered or (now - self._last_flush < ROTATE_AFTER_S
                                       and now - self._registered_at < MAX_SHARD_AGE_S):
                return False
            self._counts = Counter({k: v - self._written.get(k, 0) for k, v in self._counts.items()
                                    if v != self._written.get(k, 0)})
            self._written = Counter()
            self.shard, self.registered = _shard_name(), False
            self._version += 1
            return True


def _shard_name() -> str:
    return f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def active_gauge(totals: Counter) -> dict[tuple[str, str], float]:
    """Jobs now queued or running per pool: entered minus left."""
    gauge: dict[tuple[str, str], float] = {}
    for key, value in totals.items():
        kind, *rest = key.split("|")
        if kind in {"entered", "left"} and Status(rest[0]) in ACTIVE_STATUSES:
            sign = 1 if kind == "entered" else -1
            gauge[(rest[0], rest[1])] = gauge.get((rest[0], rest[1]), 0) + sign * value
    return gauge
