"""Held keys (quota slots, drain slots and leases, the fold lock, idempotency keys) under concurrent holders and
retried calls. Each test forces one bad interleaving: a scripted twin Dict runs another actor's whole move in
the middle of a call (or lands a call and then loses its reply, so the guard retries it), then asserts on who
holds the key."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import submit
from modelfiles import blob, sha

from comfy_saas.backends.guarded import Guarded
from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import ModelCacheConfig, Settings
from comfy_saas.jobs import keys, rollup
from comfy_saas.jobs.idempotency import IdempotencyKeys
from comfy_saas.jobs.model import Job, Status, utcnow
from comfy_saas.jobs.model_cache import ModelCache
from comfy_saas.jobs.quotas import ActiveSlots
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.wakeups import Wakeups


@dataclass
class Hook:
    method: str
    key: str
    run: Callable[[], Any]
    n: int = 1
    after: bool = False
    lose_reply: bool = False


class Scripted:
    """A twin Dict that runs a hook at the n-th call of a method on a key: before it, or after it landed (and
    then, with lose_reply, fails the call as a lost response does)."""

    def __init__(self, target: LocalDict) -> None:
        self._target = target
        self._hooks: list[Hook] = []
        self._calls: Counter[tuple[str, Any]] = Counter()
        self.fired: list[Hook] = []

    def at(self, method: str, key: str, run: Callable[[], Any], **how: Any) -> None:
        self._hooks.append(Hook(method, key, run, **how))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in {"get", "put", "pop", "contains", "update"}:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            key = args[0] if args and name != "update" else None
            self._calls[(name, key)] += 1
            hook = next((h for h in self._hooks if (h.method, h.key, h.n) == (name, key, self._calls[(name, key)])),
                        None)
            if hook is not None and not hook.after:
                self._fire(hook)
            result = attr(*args, **kwargs)
            if hook is not None and hook.after:
                self._fire(hook)
                if hook.lose_reply:
                    raise ConnectionError("the reply was lost")
            return result
        return call

    def _fire(self, hook: Hook) -> None:
        self._hooks.remove(hook)
        self.fired.append(hook)
        hook.run()


def _dict(d: Any) -> Guarded:
    return Guarded(d, "job store", delays=(0.0, 0.0))


def _job(job_id: str, status: Status) -> Job:
    now = utcnow()
    return Job(id=job_id, status=status, created_at=now, updated_at=now)


# --- quota slots ------------------------------------------------------------------------------------------

def test_a_stale_quota_slot_taken_over_while_its_holder_releases_it_keeps_one_holder(db_path: Path):
    """X finds J1's slot stale (J1 finished); before X moves, J1 gives it back and Y takes it; then Z tries.
    Pop-and-put-back took Y's value out, and Z got the slot in the gap: Y and Z both held it."""
    jobs = {"J1": _job("J1", Status.COMPLETED), "Y": _job("Y", Status.QUEUED), "Z": _job("Z", Status.QUEUED)}
    scripted = Scripted(LocalDict(db_path))
    x = ActiveSlots(_dict(scripted), jobs.get, utcnow)
    others = ActiveSlots(_dict(LocalDict(db_path)), jobs.get, utcnow)
    key = keys.active_slot(keys.ALL, 0)
    assert others.acquire(keys.ALL, 1, "J1") == 0
    got: dict[str, int | None] = {}
    scripted.at("get", key, lambda: (others.release(key, "J1"), got.update(Y=others.acquire(keys.ALL, 1, "Y"))),
                after=True)
    scripted.at("pop", key, lambda: got.update(Z=others.acquire(keys.ALL, 1, "Z")), after=True)
    got["X"] = x.acquire(keys.ALL, 1, "X")
    if "Z" not in got:
        got["Z"] = others.acquire(keys.ALL, 1, "Z")
    assert got == {"Y": 0, "X": None, "Z": None}
    assert LocalDict(db_path).get(key)["job"] == "Y"


def test_a_released_slot_whose_pop_reply_was_lost_is_not_popped_again(db_path: Path):
    """J1's release pops its slot, Y takes the slot, and only then does the pop's reply go missing: a retried
    pop took Y's value, and put it back too late when Z came in between."""
    jobs = {"J1": _job("J1", Status.COMPLETED), "Y": _job("Y", Status.QUEUED), "Z": _job("Z", Status.QUEUED)}
    scripted = Scripted(LocalDict(db_path))
    j1 = ActiveSlots(_dict(scripted), jobs.get, utcnow)
    others = ActiveSlots(_dict(LocalDict(db_path)), jobs.get, utcnow)
    key = keys.active_slot(keys.ALL, 0)
    assert j1.acquire(keys.ALL, 1, "J1") == 0
    got: dict[str, int | None] = {}
    scripted.at("pop", key, lambda: got.update(Y=others.acquire(keys.ALL, 1, "Y")), after=True, lose_reply=True)
    scripted.at("pop", key, lambda: got.update(Z=others.acquire(keys.ALL, 1, "Z")), n=2, after=True)
    j1.release(key, "J1")
    if "Z" not in got:
        got["Z"] = others.acquire(keys.ALL, 1, "Z")
    assert got == {"Y": 0, "Z": None}
    assert LocalDict(db_path).get(key)["job"] == "Y"


# --- drain slots and leases -------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def one_slot(db_path: Path, tmp_path: Path) -> tuple[Settings, Clock]:
    settings = Settings(data_dir=tmp_path, url_signing_secret="s", pools="default:ceiling=1")
    return settings, Clock()


def _services(d: Any, db_path: Path, settings: Settings) -> Services:
    svc = Services.over(d, LocalQueue(db_path), settings)
    svc.store.d = _dict(d)
    return svc


def test_a_failed_spawn_gives_back_its_slot_only_even_when_the_pops_reply_is_lost(db_path: Path, one_slot):
    """A's spawn fails and it gives its slot back; the pop lands, B claims the slot for its own spawn, and the
    pop's reply is lost. A retried pop took B's claim (it matched "any spawned entry")."""
    settings, clock = one_slot
    scripted = Scripted(LocalDict(db_path))
    a_svc, b_svc = _services(scripted, db_path, settings), _services(LocalDict(db_path), db_path, settings)
    submit(b_svc)  # one queued job: the pool needs a drain

    def refuse(pool: str, slot: int) -> None:
        raise RuntimeError("spawn refused")

    spawned: list[int] = []
    a = Wakeups(a_svc.store, refuse, clock=clock)
    b = Wakeups(b_svc.store, lambda pool, slot: spawned.append(slot), clock=clock)
    slot = keys.drain_slot("default", 0)
    scripted.at("pop", slot, lambda: b.wake("default"), after=True, lose_reply=True)
    assert a.wake("default") == 0
    assert scripted.fired and spawned == [0]
    assert LocalDict(db_path).get(slot)["state"] == "spawned"  # B's claim stands: its drain will find it


def test_a_drain_that_renews_after_its_slot_was_taken_over_learns_it_lost(db_path: Path, one_slot):
    """D stalls past its lease; a wake takes the slot for a new spawn; D's late renewal must not write over it."""
    settings, clock = one_slot
    svc = _services(LocalDict(db_path), db_path, settings)
    submit(svc)
    spawned: list[int] = []
    wakeups = Wakeups(svc.store, lambda pool, slot: spawned.append(slot), clock=clock)
    lease = wakeups.lease("default", 0, "drain-D")
    assert lease.renew()
    lease.busy()
    clock.now += settings.drain_lease_s + 1  # D stalled: its lease ran out
    assert wakeups.wake("default") == 1 and spawned == [0]
    assert lease.renew() is False and lease.lost
    assert LocalDict(db_path).get(keys.drain_slot("default", 0))["state"] == "spawned"
    lease.release()  # gives back nothing: the slot is the new spawn's
    assert LocalDict(db_path).get(keys.drain_slot("default", 0))["state"] == "spawned"


def test_a_renewal_between_a_wakes_read_and_its_claim_keeps_the_slot(db_path: Path, one_slot):
    """W reads D's lease as expired; D renews before W moves: W must not take the slot."""
    settings, clock = one_slot
    scripted = Scripted(LocalDict(db_path))
    svc, w_svc = _services(LocalDict(db_path), db_path, settings), _services(scripted, db_path, settings)
    submit(svc)
    spawned: list[int] = []
    lease = Wakeups(svc.store, lambda pool, slot: None, clock=clock).lease("default", 0, "drain-D")
    assert lease.renew()
    lease.busy()
    clock.now += settings.drain_lease_s + 1
    w = Wakeups(w_svc.store, lambda pool, slot: spawned.append(slot), clock=clock)
    scripted.at("get", keys.drain_slot("default", 0), lease.renew, after=True)
    assert w.wake("default") == 0 and spawned == []
    assert LocalDict(db_path).get(keys.drain_slot("default", 0))["drain"] == "drain-D" and not lease.lost


def test_a_renewal_whose_handover_landed_unheard_is_not_taken_for_a_lost_slot(db_path: Path, one_slot):
    """A renewal's handover lands but every reply is lost (the store guard gives up): the next renewal, sent
    under the same token, finds its own handover and keeps the slot."""
    settings, clock = one_slot
    scripted = Scripted(LocalDict(db_path))
    lease = Wakeups(_services(scripted, db_path, settings).store, lambda pool, slot: None,
                    clock=clock).lease("default", 0, "drain-D")
    assert lease.renew()
    slot = keys.drain_slot("default", 0)
    handover = keys.handover(slot, lease.held["token"])

    def away() -> None:
        raise ConnectionError("the store is away")
    scripted.at("put", handover, lambda: None, after=True, lose_reply=True)
    scripted.at("put", handover, away, n=2)
    scripted.at("put", handover, away, n=3)
    clock.now += 50
    assert lease.renew() and len(scripted.fired) == 3  # a missed renewal, not a lost slot
    assert lease.renew() and not lease.lost
    assert LocalDict(db_path).get(slot)["until"] == clock.now + settings.drain_lease_s


def test_a_drain_whose_first_write_landed_unheard_holds_its_slot(db_path: Path, one_slot):
    settings, clock = one_slot
    scripted = Scripted(LocalDict(db_path))
    lease = Wakeups(_services(scripted, db_path, settings).store, lambda pool, slot: None,
                    clock=clock).lease("default", 0, "drain-D")
    slot = keys.drain_slot("default", 0)

    def away() -> None:
        raise ConnectionError("the store is away")
    scripted.at("put", slot, lambda: None, after=True, lose_reply=True)
    scripted.at("put", slot, away, n=2)
    scripted.at("put", slot, away, n=3)
    assert lease.renew() and lease.held is None  # a missed write, not a lost slot
    assert lease.renew() and lease.held is not None and not lease.lost
    assert LocalDict(db_path).get(slot)["drain"] == "drain-D"


def test_a_drain_starting_in_a_slot_another_drain_holds_does_not_share_it(db_path: Path, one_slot):
    settings, clock = one_slot
    svc = _services(LocalDict(db_path), db_path, settings)
    wakeups = Wakeups(svc.store, lambda pool, slot: None, clock=clock)
    first, second = wakeups.lease("default", 0, "drain-1"), wakeups.lease("default", 0, "drain-2")
    assert first.renew() and second.renew() is False
    second.release()
    assert LocalDict(db_path).get(keys.drain_slot("default", 0))["drain"] == "drain-1"


# --- the fold lock and idempotency keys ---------------------------------------------------------------------

def test_runs_taking_over_a_dead_runs_fold_lock_and_its_late_unlock_leave_one_holder(db_path: Path, one_slot):
    """A's lock is stale; B reads it; C takes it over and A (not dead after all) unlocks; then B moves and D
    arrives in the gap a pop would leave. One run holds the lock."""
    settings, _ = one_slot
    scripted = Scripted(LocalDict(db_path))
    b_svc, others = _services(scripted, db_path, settings), _services(LocalDict(db_path), db_path, settings)
    key = keys.maintenance("metrics_fold")
    t0 = 1_000_000.0
    assert rollup._lock(others.store, t0, "A")
    late = t0 + rollup.LOCK_STALE_S + 1
    won: dict[str, bool] = {}
    scripted.at("get", key, lambda: (won.update(C=rollup._lock(others.store, late, "C")),
                                     rollup._unlock(others.store, "A")), after=True)
    scripted.at("pop", key, lambda: won.update(D=rollup._lock(others.store, late, "D")), after=True)
    won["B"] = rollup._lock(b_svc.store, late, "B")
    if "D" not in won:
        won["D"] = rollup._lock(others.store, late, "D")
    assert won == {"C": True, "B": False, "D": False}
    assert LocalDict(db_path).get(key)["nonce"] == "C"


def test_an_abandoned_idempotency_key_freed_twice_frees_only_the_abandoned_entry(db_path: Path):
    """Two repeats find the first submission abandoned; one frees the key and a third submission takes it;
    the other repeat's late free must leave the third's entry."""
    scripted = Scripted(LocalDict(db_path))
    records: dict[str, Job] = {}
    late = utcnow()
    old = late - timedelta(seconds=60)
    first = IdempotencyKeys(_dict(LocalDict(db_path)), records.get, lambda: old)
    assert first.claim("u", "k", "J1", "digest")
    repeat_a = IdempotencyKeys(_dict(scripted), records.get, lambda: late)
    others = IdempotencyKeys(_dict(LocalDict(db_path)), records.get, lambda: late)
    key = keys.idempotency("u", "k")

    def meanwhile() -> None:
        assert others.original("u", "k", "digest") is None  # repeat B frees the key
        assert others.claim("u", "k", "J3", "digest")
        records["J3"] = _job("J3", Status.QUEUED)
    scripted.at("get", key, meanwhile, after=True)
    assert repeat_a.original("u", "k", "digest") is None
    assert LocalDict(db_path).get(key)["job_id"] == "J3"


# --- the model cache's eviction mark ------------------------------------------------------------------------

class StoreClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def test_an_evictor_slower_than_its_mark_leaves_the_next_evictors_mark(tmp_path: Path):
    """E1 stalls while holding a file's eviction mark until it lapses; E2 takes the mark over, and while E2
    works, E1 wakes and gives up. E1's clean-up popped E2's mark, so jobs no longer saw the file going."""
    db, clock = tmp_path / "state.sqlite3", StoreClock()
    settings = Settings(data_dir=tmp_path, model_cache=ModelCacheConfig(budget_bytes=1024 * 1024))
    slow, fast = Scripted(LocalDict(db)), Scripted(LocalDict(db))
    e1, e2 = (ModelCache(Services.over(d, LocalQueue(db), settings, LocalStore(tmp_path / "out", "s", "http://x"),
                                       clock=clock)) for d in (slow, fast))
    data = blob("model")
    temp = e1.files.temp_path()
    temp.write_bytes(data)
    e1.files.put(temp, sha(data))
    e1.remember(sha(data), len(data), "loras", "m.safetensors", "https://x/m", "job", None)
    paused, go = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def stall() -> None:
        paused.set()
        assert go.wait(30)
    slow.at("get", keys.model_used(sha(data)), stall)
    first = threading.Thread(target=lambda: results.update(E1=e1.evict(sha(data))))
    first.start()
    assert paused.wait(30)
    clock.now += timedelta(seconds=600)  # E1's mark lapsed while it stalled

    def e1_finishes_meanwhile() -> None:
        go.set()
        first.join(30)
        results["marked"] = e2.evicting(sha(data))
    fast.at("get", keys.model_used(sha(data)), e1_finishes_meanwhile)
    results["E2"] = e2.evict(sha(data))
    assert results == {"E1": "busy", "marked": True, "E2": "evicted"}
    assert not e2.files.exists(sha(data)) and not e2.evicting(sha(data))
