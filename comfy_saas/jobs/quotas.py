"""Active-job quotas without counters: `capacity` numbered slots per scope, each claimed with
`put(skip_if_exists=True)` by the job that holds it and released when the job finishes.

A slot whose holder finished without giving it back, or whose submit never completed, is taken over, so a
crash can cost a slot for a minute, never forever. A slot is a held key (backends/held_keys.py) whose token
is its job's id: a takeover and its holder's own release cannot both win, and neither leaves the slot free
for a third job in between.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import held_keys, keys
from comfy_saas.jobs.index import DictLike
from comfy_saas.jobs.model import Job

ABANDONED_AFTER_S = 60.0  # a slot whose job never got a record this long after it was taken


class ActiveSlots:
    """Quota slots per scope over a Dict; `load(job_id)` reads a job (to see whether it finished)."""

    def __init__(self, d: DictLike, load: Callable[[str], Job | None], clock: Callable[[], datetime]) -> None:
        self._d = d
        self._load = load
        self._clock = clock

    def acquire(self, scope: str, capacity: int, job_id: str, probes: int = 32) -> int | None:
        """One of `capacity` slots for job_id, or None when every probed slot is busy. Costs one round trip
        while the scope has room."""
        start = random.randrange(capacity)
        for i in range(min(capacity, probes)):
            n = (start + i) % capacity
            if self._take(keys.active_slot(scope, n), job_id):
                return n
        return None

    def _take(self, key: str, job_id: str) -> bool:
        mine = {"job": job_id, "at": self._clock().isoformat(), "token": job_id}
        if self._d.put(key, mine, skip_if_exists=True):
            return True
        holder = self._d.get(key)
        if _holder(holder) == job_id:
            return True  # our own write, reported lost by a retried call
        if holder is None or not self._stale(holder):
            return False
        return held_keys.replace(self._d, key, holder, mine, self._clock().timestamp())

    def _stale(self, holder: Any) -> bool:
        held = self._load(_holder(holder))
        if held is not None:
            return held.terminal
        at = holder.get("at") if isinstance(holder, dict) else None
        age = (self._clock() - datetime.fromisoformat(at)).total_seconds() if at else ABANDONED_AFTER_S
        return age >= ABANDONED_AFTER_S  # a submit still in flight is not a leak

    def release(self, key: str, job_id: str) -> bool:
        """Free the slot if it still holds job_id; False when it was taken over meanwhile. Two round trips."""
        return held_keys.release(self._d, key, job_id, self._clock().timestamp())

    def release_all(self, job: Job) -> None:
        """Give back every slot the job holds; idempotent."""
        run_all([lambda s=s, n=n: self.release(keys.active_slot(s, n), job.id)
                 for s, n in (job.active_slots or {}).items()])

    @staticmethod
    def handovers(job: Job) -> list[str]:
        """The handover entries the job's slots left (deleted with the job: nobody acts on its slots by then)."""
        return [keys.handover(keys.active_slot(s, n), job.id) for s, n in (job.active_slots or {}).items()]


def _holder(value: Any) -> str | None:
    return value.get("job") if isinstance(value, dict) else value
