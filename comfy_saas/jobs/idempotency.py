"""Idempotency keys: the first submission with a key wins `idem:{hash}` with `put(skip_if_exists=True)`;
repeats get its job. An entry whose submission never completed (its job has no record a while after) is
abandoned and may be taken over, so an outage mid-submit never blocks a key for good. The key is a held key
(backends/held_keys.py) whose token is its job's id, so freeing an abandoned entry, its submission giving
it back and the job's deletion each remove that entry only, never a newer submission's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from comfy_saas.errors import Conflict, Overloaded
from comfy_saas.jobs import held_keys, keys
from comfy_saas.jobs.index import DictLike
from comfy_saas.jobs.model import Job

ABANDONED_AFTER_S = 30.0
WAIT_FOR_ORIGINAL_S = 5.0


class IdempotencyKeys:
    def __init__(self, d: DictLike, load: Callable[[str], Job | None], clock: Callable[[], datetime]) -> None:
        self._d = d
        self._load = load
        self._clock = clock

    def claim(self, user_id: str | None, key: str, job_id: str, digest: str) -> bool:
        """True if this submission owns the key (one round trip)."""
        entry = {"job_id": job_id, "digest": digest, "at": self._clock().isoformat(), "token": job_id}
        if self._d.put(keys.idempotency(user_id, key), entry, skip_if_exists=True):
            return True
        current = self._d.get(keys.idempotency(user_id, key)) or {}
        return current.get("job_id") == job_id  # our own write, reported lost by a retried call

    def forget(self, user_id: str | None, key: str, job_id: str) -> None:
        """Give the key back if job_id's submission still holds it (an undone submission, a deleted job)."""
        held_keys.release(self._d, keys.idempotency(user_id, key), job_id, self._clock().timestamp())

    def drop(self, user_id: str | None, key: str, job_id: str) -> None:
        """A deleted job's key: freed if it still holds it, and its handover entry with it (nobody acts on a
        deleted job's entry any more). Two to three round trips."""
        self.forget(user_id, key, job_id)
        self._d.pop(keys.handover(keys.idempotency(user_id, key), job_id), None)

    def original(self, user_id: str | None, key: str, digest: str) -> Job | None:
        """The job the key maps to; None when that submission was abandoned and the key freed for a retry.
        Conflict when the key was used with a different request."""
        entry = self._d.get(keys.idempotency(user_id, key)) or {}
        if entry.get("digest") != digest:
            raise Conflict("idempotency_key was already used with a different request")
        deadline = time.monotonic() + WAIT_FOR_ORIGINAL_S
        while (job := self._load(entry["job_id"])) is None:  # the winner may not have written it yet
            if self._abandoned(entry):
                self._free(user_id, key, entry)
                return None
            if time.monotonic() > deadline:
                raise Overloaded("the original request with this idempotency_key is still being stored; retry")
            time.sleep(0.05)
        return job

    def _abandoned(self, entry: dict[str, Any]) -> bool:
        at = entry.get("at")
        return at is None or (self._clock() - datetime.fromisoformat(at)).total_seconds() > ABANDONED_AFTER_S

    def _free(self, user_id: str | None, key: str, entry: dict[str, Any]) -> None:
        held_keys.release(self._d, keys.idempotency(user_id, key), held_keys.token_of(entry) or "",
                            self._clock().timestamp())
