"""Waking a pool's drains on Modal, coalesced: spawn only when the pool's queued work exceeds the drains that
could take it, never beyond its ceiling, and keep its floor of drains pulling.

Each pool has `ceiling` numbered slots `drain:{pool}:{n}` in the Dict. A slot holds a spawned drain (until it
starts, or until its start grace ends) or a running one, idle or busy, renewed by the drain while it lives so a
slot whose container died frees itself. Deciding costs one round trip (the queue depth and every slot, read
together). A spawn first claims a free slot with put(skip_if_exists), so deciders racing each other claim
different slots, and a claim lost means someone else is spawning that drain. Slot n < floor marks a floor
drain, which keeps pulling while idle; the sweeper wakes every pool each minute, which respawns them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfy_saas import logs
from comfy_saas.backends.parallel import map_all, run_all
from comfy_saas.config.pools import PoolSpec
from comfy_saas.jobs import held_keys, keys
from comfy_saas.jobs.store import JobStore

log = logging.getLogger(__name__)

# Backoff between spawn attempts on a rate limit; short, because the submit waits on it and the sweeper
# retries within a minute anyway (each attempt's own wait is bounded by the spawn: worker.spawn's timeout).
SPAWN_RETRY_DELAYS_S = (0.25, 0.5, 1.0)
FULL_MEMO_S = 1.0  # a pool seen at its ceiling is not read again by this process for this long

Spawn = Callable[[str, int], None]  # spawn(pool, slot): start one drain input of the pool's worker class


@dataclass(frozen=True)
class PoolState:
    """What a wake decision looks at: queued wake-ups, drains that could take one now (idle, or spawned and
    not started yet), drains busy with a job, and the pool's floor and ceiling."""

    queued: int
    idle: int
    busy: int
    floor: int
    ceiling: int


def spawns_needed(state: PoolState) -> int:
    """How many drains to spawn now (pure): enough for the queued work the idle drains cannot take, and enough
    to reach the floor, within the room left under the ceiling."""
    live = state.idle + state.busy
    room = max(0, state.ceiling - live)
    return min(room, max(state.queued - state.idle, state.floor - live, 0))


def tally(queued: int, slots: list[Any], spec: PoolSpec, now: float) -> tuple[PoolState, list[int]]:
    """The pool's state from its slot values, and its free slot numbers (lowest first: floor slots fill first)."""
    idle = busy = 0
    free = []
    for n, value in enumerate(slots):
        if not isinstance(value, dict) or float(value.get("until", 0)) <= now:
            free.append(n)
        elif value.get("state") == "busy":
            busy += 1
        else:
            idle += 1
    return PoolState(queued, idle, busy, spec.floor, spec.ceiling), free


class Wakeups:
    """The spawn side of waking workers. `wake(pool)` never raises: the job is stored and queued whatever
    happens here, and the sweeper wakes every pool again within a minute."""

    def __init__(self, store: JobStore, spawn: Spawn, *, retry_on: tuple[type[BaseException], ...] = (),
                 delays: tuple[float, ...] = SPAWN_RETRY_DELAYS_S, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.settings = store.settings
        self.spawn = spawn
        self.retry_on = retry_on
        self.delays = delays
        self.sleep = sleep
        self.clock = clock or (lambda: store.clock().timestamp())
        self._full_until: dict[str, float] = {}

    def wake(self, pool: str) -> int:
        """Spawn the drains the pool needs now; how many were spawned."""
        try:
            return self._wake(pool)
        except Exception as exc:  # a wake-up is best effort: the sweeper comes back to it
            logs.event(log, "pool.wake_failed", logging.WARNING, pool=pool, error=str(exc))
            return 0

    def wake_all(self) -> dict[str, int]:
        """Wake every configured pool (the sweeper's minute tick); spawns per pool."""
        pools = list(self.settings.pool_table())
        return dict(zip(pools, map_all(self.wake, pools), strict=True))

    def _wake(self, pool: str) -> int:
        spec = self.settings.pool_table().get(pool)
        now = self.clock()
        if spec is None or self._full_until.get(pool, 0.0) > now:
            return 0
        got = run_all([lambda: self.store.queue_depth(pool)] +
                      [lambda n=n: self.store.d.get(keys.drain_slot(pool, n)) for n in range(spec.ceiling)])
        state, free = tally(got[0], got[1:], spec, now)
        if state.idle + state.busy >= spec.ceiling:
            self._full_until[pool] = now + FULL_MEMO_S
        spawned = 0
        for n in free[:spawns_needed(state)]:
            if (token := self._claim(pool, n, got[1 + n], now)) and self._spawn(pool, n, token):
                spawned += 1
        if spawned:
            log.info("pool %s: spawned %d drain(s) for %d queued (%d idle, %d busy)", pool, spawned, state.queued,
                     state.idle, state.busy, extra={"event": "pool.spawned", "pool": pool})
        return spawned

    def _claim(self, pool: str, n: int, seen: Any, now: float) -> str | None:
        """Take free slot n for a spawn (its entry's token); None when another decider got there first (its
        drain covers ours), or the drain there renewed it since we read it."""
        key = keys.drain_slot(pool, n)
        entry = {"state": "spawned", "drain": None, "until": now + self.settings.drain_start_grace_s,
                 "token": held_keys.new_token()}
        if seen is None:
            return entry["token"] if held_keys.claim(self.store.d, key, entry) else None
        return entry["token"] if held_keys.replace(self.store.d, key, seen, entry, now) else None

    def _spawn(self, pool: str, n: int, token: str) -> bool:
        """Spawn with backoff on rate limits; on failure give the slot back (the job stays queued)."""
        error: BaseException | None = None
        for delay in (0.0, *self.delays):
            if delay:
                self.sleep(delay)
            try:
                self.spawn(pool, n)
                return True
            except self.retry_on as exc:
                error = exc
            except Exception as exc:  # not a rate limit: retrying now would fail the same way
                error = exc
                break
        # A drain that took the slot meanwhile keeps it.
        held_keys.release(self.store.d, keys.drain_slot(pool, n), token, self.clock())
        logs.event(log, "pool.spawn_failed", logging.WARNING, pool=pool, error=f"slot {n}: {error}")
        return False

    def lease(self, pool: str, slot: int, drain_id: str) -> DrainLease:
        """The slot a running drain holds; releasing it lets this process's next wake look again at once."""
        return DrainLease(self.store, pool, slot, drain_id, self.settings.drain_lease_s, self.clock,
                          on_release=lambda: self._full_until.pop(pool, None))


class DrainLease:
    """A running drain's slot: written at start, renewed by a keeper thread every third of the lease, and
    rewritten when the drain turns idle, or busy for longer than BUSY_REPORT_S (a quick job costs no write)."""

    BUSY_REPORT_S = 1.0

    def __init__(self, store: JobStore, pool: str, slot: int, drain_id: str, lease_s: float,
                 clock: Callable[[], float], on_release: Callable[[], Any] | None = None) -> None:
        self.d = store.d
        self.key = keys.drain_slot(pool, slot)
        self.drain_id = drain_id
        self.lease_s = lease_s
        self.clock = clock
        self.on_release = on_release
        self.state, self.since = "idle", time.monotonic()
        self._written: tuple[str, float] = ("", 0.0)  # the state last written, and when (monotonic)
        self.held: dict[str, Any] | None = None  # the slot's value as this drain last wrote it
        self._token = held_keys.new_token()  # the next write's
        self.lost = False
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.renew()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def busy(self) -> None:
        if self.state != "busy":
            self.state, self.since = "busy", time.monotonic()

    def idle(self) -> None:
        if self.state != "idle":
            self.state, self.since = "idle", time.monotonic()
            if self._written[0] != "idle":
                self._changed.set()

    def _wait_s(self) -> float:
        now = time.monotonic()
        wait = self._written[1] + self.lease_s / 3 - now
        if self.state == "busy" and self._written[0] != "busy":
            wait = min(wait, self.since + self.BUSY_REPORT_S - now)
        return max(wait, 0.01)

    def _keep(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self._wait_s())
            self._changed.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            renew = now - self._written[1] >= self.lease_s / 3
            report = self.state != self._written[0] and (self.state == "idle"
                                                          or now - self.since >= self.BUSY_REPORT_S)
            if renew or report:
                self.renew()

    def renew(self) -> bool:
        """Write the slot now (the keeper thread's renewals and reports); False once the slot is lost: taken
        over while this drain was too slow to renew it, or held by another drain when this one started."""
        state = self.state
        # A move whose call failed is sent again under the same token: its handover may have landed.
        entry = {"state": state, "drain": self.drain_id, "until": self.clock() + self.lease_s, "token": self._token}
        try:
            held = self._move(entry)
            self._token = held_keys.new_token()
        except Exception as exc:  # a missed renewal costs at most one extra spawn later
            self._written = (self._written[0], time.monotonic())  # try again at the next renewal
            logs.event(log, "drain.lease_write_failed", logging.WARNING, error=str(exc))
            return True
        self._written = (state, time.monotonic())
        if not held:
            self.lost = True
            self._stop.set()
            logs.event(log, "drain.lease_lost", logging.WARNING, error=f"{self.key} is another drain's")
        return held

    def _move(self, entry: dict[str, Any]) -> bool:
        """Every write of the slot moves it off the value this drain wrote last (held_keys.py), so a renewal
        can never overwrite a takeover."""
        if self.held is not None:
            won = held_keys.replace(self.d, self.key, self.held, entry, self.clock())
        else:
            seen = self.d.get(self.key)
            if seen is None:
                won = held_keys.claim(self.d, self.key, entry)
            elif held_keys.token_of(seen) == entry["token"]:
                won = True  # a first write that landed though its call failed (sent again under its token)
            else:
                won = _takeable(seen, self.clock()) and held_keys.replace(self.d, self.key, seen, entry,
                                                                            self.clock())
        if won:
            self.held = entry
        return won

    def release(self) -> None:
        """Stop renewing and free the slot, unless another drain holds it by now."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join()
        if self.held is not None:
            held_keys.release(self.d, self.key, self.held["token"], self.clock())
            self.held = None
        if self.on_release is not None:
            self.on_release()


def _takeable(seen: Any, now: float) -> bool:
    """Whether a starting drain may take its slot from this value: the spawn that started it, or one expired."""
    return not isinstance(seen, dict) or seen.get("state") == "spawned" or float(seen.get("until", 0)) <= now
