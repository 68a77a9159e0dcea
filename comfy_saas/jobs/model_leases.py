"""Which jobs use a cached model file right now, kept in the Dict so every container sees the same answer.

A job that uses file F claims the next numbered slot `modeluse:{F}:{n}` (put with skip_if_exists, so two jobs
never share one) saying "job J uses F until T"; it zeroes its slot when it ends, and a dead worker's lease
simply runs out. Slots are claimed in order, so whoever asks "is F in use?" reads backwards from the newest
slot and stops at the first one claimed longer ago than any lease can last. Every use also stamps
`modelused:{F}` before it looks for an eviction in progress, and an evictor marks F before it reads that
stamp: of a user and an evictor arriving together, at least one sees the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys

CLOCK_SKEW_S = 300.0  # containers' clocks may disagree; leases are judged with this much slack
_WINDOW = 16  # slots read per round trip when scanning backwards


@dataclass
class Lease:
    """One job's hold on one file: the slot it claimed and what it wrote there."""

    sha256: str
    n: int
    body: dict[str, Any]


class Leases:
    """Lease slots over a Dict. `clock()` is epoch seconds; `longest_s` bounds any lease's length."""

    def __init__(self, d: Any, clock: Callable[[], float], longest_s: float) -> None:
        self.d, self.clock, self.longest_s = d, clock, longest_s

    def acquire(self, sha256: str, job_id: str, until: float) -> Lease:
        """Claim the next free slot for job_id, and stamp the file as used now (the eviction order)."""
        now = self.clock()
        body = {"job": job_id, "at": now, "until": until}
        n = int(self.d.get(keys.model_lease_head(sha256)) or 0)
        while not self.d.put(keys.model_lease(sha256, n), body, skip_if_exists=True):
            n += 1
        # One call: the head is only a hint (a lagging one is corrected by probing forward).
        self.d.update({keys.model_lease_head(sha256): n + 1, keys.model_used(sha256): {"at": now, "job": job_id}})
        return Lease(sha256, n, body)

    def release(self, lease: Lease) -> None:
        """The job is done with the file (its slot keeps its claim time for the backwards scan)."""
        self.d.put(keys.model_lease(lease.sha256, lease.n), {**lease.body, "until": 0})

    def last_used(self, sha256: str) -> float | None:
        entry = self.d.get(keys.model_used(sha256))
        return float(entry["at"]) if entry else None

    def in_use(self, sha256: str) -> bool:
        """Whether any job's lease on the file may still run."""
        now = self.clock()
        used = self.last_used(sha256)
        if used is None or used < now - self.longest_s - CLOCK_SKEW_S:
            return False  # nobody used it within the longest lease
        end = self._end(sha256)
        while end > 0:
            start = max(0, end - _WINDOW)
            slots = run_all([lambda n=n: self.d.get(keys.model_lease(sha256, n)) for n in range(start, end)])
            for slot in reversed(slots):
                if slot is None:
                    continue  # expired from the Dict: old
                if slot["until"] > now - CLOCK_SKEW_S:
                    return True
                if slot["at"] < now - self.longest_s - CLOCK_SKEW_S:
                    return False  # every older slot was claimed even earlier
            end = start
        return False

    def _end(self, sha256: str) -> int:
        """One past the newest claimed slot (the head hint, corrected forward)."""
        n = int(self.d.get(keys.model_lease_head(sha256)) or 0)
        while self.d.get(keys.model_lease(sha256, n)) is not None:
            n += 1
        return n
