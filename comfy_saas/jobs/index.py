"""Numbered index slots per scope (all jobs, each user), newest first, without ever scanning the Dict.

A writer claims `idx:{scope}:{n}` with skip_if_exists, so concurrent writers get distinct slots; threads of one
process draw distinct numbers, and a submission tries its guess while reading the head hint, so a slot costs
no round trip of its own. The head hint may lag behind racing writers; readers correct it by probing
forward in parallel batches. Slots are never reused: a job is only kept in a slot above the head hint.
A process that has seen a scope's head (listing it, or writing to it) reads the hint together with the slots
around where the head was, so a first page costs two round trips instead of three.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys

PROBE_BATCH = 8  # slots probed past the head hint in one round trip


class DictLike(Protocol):
    def get(self, key: Any, default: Any = None) -> Any: ...
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...
    def pop(self, key: Any, default: Any = ...) -> Any: ...
    def contains(self, key: Any) -> bool: ...
    def update(self, other: Any = None, /, **kwargs: Any) -> None: ...


class SlotIndex:
    """Append-only numbered slots per scope; reading a page costs O(page), never a scan."""

    def __init__(self, d: DictLike) -> None:
        self._d = d
        self._handed_out: dict[str, int] = {}
        self._seen_head: dict[str, int] = {}
        self._lock = threading.Lock()

    def append(self, scope: str, job_id: str, hint: int | None = None) -> int:
        """Claim the next free slot for job_id and move the head hint to it; the slot's number."""
        n = self.claim(scope, job_id, self.head_hint(scope) if hint is None else hint)
        self._d.put(keys.index_head(scope), n)
        return n

    def claim(self, scope: str, job_id: str, hint: int) -> int:
        """The first free slot after `hint` (and after any this process already handed out), claimed for
        job_id: one round trip unless writers in other processes took the next ones. The caller moves the
        head hint (often within a write it makes anyway)."""
        n = self._next(scope, hint)
        while not self._d.put(keys.index_slot(scope, n), job_id, skip_if_exists=True):
            n = self._next(scope, n)
        return n

    def guess(self, scope: str) -> int:
        """A slot number to try without reading the head: the one after the last this process handed out.
        Only kept if it lands above the head hint read alongside (see `settle_guess`)."""
        return self._next(scope, 0)

    def try_slot(self, scope: str, n: int, job_id: str) -> bool:
        return self._d.put(keys.index_slot(scope, n), job_id, skip_if_exists=True)

    def settle_guess(self, scope: str, job_id: str, guessed: int, won: bool, hint: int) -> int:
        """The slot job_id ends up in after trying `guessed` while the head hint read `hint`: kept when won
        above the hint; a slot won at or below it may be a hole left by cleanup (below where the sweeper has
        read), so it is given back and a slot after the hint claimed instead."""
        if won and guessed > hint:
            return guessed
        if won:
            self.remove(scope, guessed)
        return self.claim(scope, job_id, hint)

    def _next(self, scope: str, after: int) -> int:
        # Threads of one process never race each other for a slot: they draw distinct numbers here.
        with self._lock:
            n = max(after, self._handed_out.get(scope, 0)) + 1
            self._handed_out[scope] = n
            return n

    def head_hint(self, scope: str) -> int:
        return self._d.get(keys.index_head(scope)) or 0

    def head(self, scope: str) -> int:
        """The highest claimed slot (two round trips while writers do not race far past the hint)."""
        return self.newest(scope, 0)[0]

    def newest(self, scope: str, window: int, hint: int | None = None, low: int = 1) -> tuple[int, dict[int, Any]]:
        """The highest claimed slot, and the values of the slots read on the way, which include the `window`
        below the head hint: the hint (unless given), then the probe past it together with the window. The
        highest claimed slot is the last one followed by PROBE_BATCH free ones; a probe twice that long finds
        it in one read unless writers raced more than PROBE_BATCH past the hint. Where this process has seen
        the head before, the hint is read together with the slots around it (see `_read_near`)."""
        seen: dict[int, Any] = {}
        if hint is None:
            hint, seen = self._read_near(scope, window, low)
        n = hint
        lo = max(low, n - window + 1)
        while True:
            if numbers := [k for k in range(lo, n + 2 * PROBE_BATCH + 1) if k not in seen]:
                seen.update(zip(numbers, self.slots(scope, numbers), strict=True))
            top = max((k for k in range(n + 1, n + 2 * PROBE_BATCH + 1) if seen.get(k) is not None), default=n)
            if top <= n + PROBE_BATCH:
                with self._lock:  # the latest, not the highest: on Modal a quiet week can restart a scope
                    self._seen_head[scope] = top
                return top, seen
            n = top

    def _read_near(self, scope: str, window: int, low: int) -> tuple[int, dict[int, Any]]:
        """The head hint, and the slots this process expects to need with it: around the last head it saw or
        slot it handed out, a PROBE_BATCH of slack each way. Nothing but the hint when it has seen neither."""
        with self._lock:
            guess = max(self._seen_head.get(scope, 0), self._handed_out.get(scope, 0))
        if not guess:
            return self.head_hint(scope), {}
        numbers = list(range(max(low, guess - window - PROBE_BATCH + 1), guess + 3 * PROBE_BATCH + 1))
        got = run_all([lambda: self.head_hint(scope),
                       *(lambda k=k: self._d.get(keys.index_slot(scope, k)) for k in numbers)])
        return got[0], dict(zip(numbers, got[1:], strict=True))

    def slots(self, scope: str, numbers: list[int]) -> list[Any]:
        """The job ids in the given slots (None for empty ones), in one round trip."""
        return run_all([lambda k=k: self._d.get(keys.index_slot(scope, k)) for k in numbers])

    def remove(self, scope: str, n: int) -> None:
        self._d.pop(keys.index_slot(scope, n), None)


def past_finished_prefix(slots: list[tuple[int, Any]], finished: Callable[[Any], bool]) -> int | None:
    """The slot after the longest run of finished entries at the start of `slots` (a new low-water
    mark), or None when the first entry is unfinished."""
    mark = None
    for n, entry in slots:
        if not finished(entry):
            break
        mark = n + 1
    return mark
