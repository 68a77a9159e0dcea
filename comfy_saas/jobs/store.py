"""The job store over any modal.Dict / modal.Queue pair (or their local twins): the primitives every job
move is made of. The moves themselves live in lifecycle.py.

The Dict is the source of truth; the Queue only carries wake-ups. Dict has no compare-and-swap, so every
"exactly one wins" decision is a `put(..., skip_if_exists=True)`: idempotency keys, quota and index slots,
and every status move. `transition()` is the one gateway for status writes: a move from the record at claim
n wins `claim:{id}:{n+1}` with its outcome inside, then writes the record, so two moves can never both
win and a crashed writer's decision can be finished by whoever finds it. A running attempt's heartbeat and
progress live under their own key, written only by the attempt's owner, so they never write back a
record read earlier.

Every call is a network round trip on Modal (~25 ms); docstrings count the sequential ones.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from comfy_saas.backends.parallel import run_all, submit
from comfy_saas.config import Settings
from comfy_saas.errors import InvalidInput, NotFound, NotOwner, QueueFull
from comfy_saas.jobs import changes, keys
from comfy_saas.jobs.counters import Counters
from comfy_saas.jobs.idempotency import IdempotencyKeys
from comfy_saas.jobs.index import DictLike, SlotIndex
from comfy_saas.jobs.model import Job, Output, Progress, Status, check_transition, utcnow
from comfy_saas.jobs.quotas import ActiveSlots

MAX_PAGE = 100
PROGRESS_EVENTS_KEPT = 300
CATALOGUE_TTL_S = 30.0  # how long a process trusts the node catalogue it read
# With a status filter a page may need more slots than its size; bound the work and hand back a cursor.
_FILTER_SCAN_FACTOR = 5
# A queue partition holds 5,000 items and 64 MiB (pickled) on Modal: 13,421 bytes an item. A wake-up is its record
# plus about 100 bytes, and pickles to about its JSON size, so records up to 12 KiB ride along (12.3 KB pickled).
WAKEUP_RECORD_MAX_BYTES = 12 * 1024


class QueueLike(Protocol):
    def put(self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None
            ) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any: ...
    def len(self, *, partition: str | None = None, total: bool = False) -> int: ...


class Decided(NotOwner):
    """Another actor's move won the claim this one needed; `winner` is its outcome (when recorded) and
    `at` when it was claimed, so a record left behind by a crashed winner can be repaired."""

    def __init__(self, message: str, winner: Job | None, at: datetime | None) -> None:
        super().__init__(message)
        self.winner = winner
        self.at = at


@dataclass(frozen=True)
class Wakeup:
    """A queue item: the job as it was queued (so a worker can start it without reading it first; None when its
    record was too large to carry) and when the wake-up was sent. `payload` is only ever set by wake-ups sent
    before they stopped carrying it."""

    job_id: str
    job: Job | None
    sent_at: float
    payload: dict[str, Any] | None = None


@dataclass
class CounterRegistry:
    """The metrics registry as read: its low mark, its slots from there to the head (shard names, None where
    empty), the rolled-up totals, and each registered shard's value by name (None once deleted)."""

    low: int
    slots: dict[int, str | None]
    rollup: dict[str, Any]
    shards: dict[str, dict[str, Any] | None]


@dataclass
class Page:
    jobs: list[Job]
    next_cursor: str | None


class JobStore:
    """Jobs over a Dict/Queue pair."""

    def __init__(self, jobs: DictLike, work: QueueLike, settings: Settings,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.d = jobs
        self._q = work
        self._catalogues: dict[str, tuple[float, dict[str, Any] | None]] = {}  # pool -> (expires, catalogue)
        self.settings = settings
        self.clock = clock
        self.index = SlotIndex(jobs)
        self.quotas = ActiveSlots(jobs, self.get, clock)
        self.idempotency = IdempotencyKeys(jobs, self.get, clock)
        self._pending: dict[str, Future] = {}
        self._pending_lock = threading.Lock()

    # --- records -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job with its running attempt's heartbeat and progress (one round trip)."""
        record, live = run_all([lambda: self.d.get(keys.job(job_id)), lambda: self.d.get(keys.progress(job_id))])
        return _merge(record, live)

    def get_many(self, job_ids: list[str | None], live: bool = True) -> list[Job | None]:
        """Several jobs in one round trip; None for missing ids and records. Without `live` the running
        attempts' heartbeats are left out (half the calls)."""
        calls: list[Callable[[], Any]] = []
        for job_id in job_ids:
            calls.append(lambda j=job_id: self.d.get(keys.job(j)) if j else None)
            if live:
                calls.append(lambda j=job_id: self.d.get(keys.progress(j)) if j else None)
        got = run_all(calls)
        if not live:
            return [_merge(record, None) for record in got]
        return [_merge(got[i], got[i + 1]) for i in range(0, len(got), 2)]

    def live_of(self, jobs: list[Job]) -> list[Job]:
        """The running ones among `jobs` with their heartbeats merged in (one round trip)."""
        running = [j for j in jobs if j.status is Status.RUNNING]
        lives = run_all([lambda j=j: self.d.get(keys.progress(j.id)) for j in running])
        return [_merge(j.to_record(), live) for j, live in zip(running, lives, strict=True)]

    def exists(self, job_id: str) -> bool:
        return self.d.contains(keys.job(job_id))

    def require(self, job_id: str, user_id: str | None = None) -> Job:
        """The job, or NotFound (also when it belongs to another user than `user_id`)."""
        job = self.get(job_id)
        if job is None or (user_id is not None and job.user_id != user_id):
            raise NotFound(f"no job {job_id!r}")
        return job

    def payload(self, job_id: str) -> dict[str, Any]:
        """The workflow, media and overrides of a job (large parts are references into object storage)."""
        body = self.d.get(keys.payload(job_id))
        if body is None:
            raise NotFound(f"no workflow stored for job {job_id!r}")
        return body

    def put_payload(self, job_id: str, payload: dict[str, Any]) -> None:
        self.d.put(keys.payload(job_id), payload)

    def put_record(self, job: Job, extra: dict[str, Any] | None = None) -> None:
        """Store a new job's record (and any `extra` keys) in one round trip. The record goes in only if it is
        not there: the wake-up travels beside it, so a fast worker may have started (even finished) the job
        and written its record first, and a submit's late write must not turn it back to queued."""
        calls: list[Callable[[], Any]] = [lambda: self.d.put(keys.job(job.id), job.to_record(), skip_if_exists=True)]
        if extra:
            calls.append(lambda: self.d.update(extra))
        run_all(calls)

    def forget_new(self, job: Job) -> None:
        """Undo put_new for a submission that could not be completed (one round trip)."""
        run_all([lambda: self.d.pop(keys.job(job.id), None), lambda: self.d.pop(keys.payload(job.id), None)])

    # --- decisions and status -------------------------------------------------------------------

    def transition(self, job: Job, target: Status, owner: str, *, defer_write: bool = False, **changes: Any) -> Job:
        """Move `job` (as the caller last saw it) to `target`; the only status writer.

        The move wins claim `claim_seq + 1` with its outcome in one `put(skip_if_exists)`, so every decision
        about a job's next step has exactly one winner and survives a crash of its writer; then the record
        is written. Two round trips, or one with defer_write (the record then lands in the background and
        later writes of it wait for it). IllegalTransition for moves the lifecycle forbids, Decided when
        another actor's move won."""
        check_transition(job.status, target)
        now = self.clock()
        n = job.claim_seq + 1
        updated = job.model_copy(update={"status": target, "claim_seq": n, "updated_at": now,
                                         **_stamps(job, target, now), **changes})
        updated = Job.model_validate(updated.model_dump())  # validate the changes, not just copy them
        nonce, record = uuid.uuid4().hex, updated.to_record()
        entry = {"owner": owner, "at": now.isoformat(), "nonce": nonce, "outcome": record}
        if not self.d.put(keys.claim(job.id, n), entry, skip_if_exists=True):
            lost = self._decided(job, n, nonce)
            if lost is not None:
                raise lost
        self.write_record(updated, wait=not defer_write, record=record)
        return updated

    def _decided(self, job: Job, n: int, nonce: str) -> Decided | None:
        entry = self.d.get(keys.claim(job.id, n)) or {}
        if entry.get("nonce") == nonce:
            return None  # our own write, reported lost by a retried call
        winner = Job.model_validate(entry["outcome"]) if entry.get("outcome") else None
        at = datetime.fromisoformat(entry["at"]) if entry.get("at") else None
        return Decided(f"claim {n} of job {job.id} was won by {entry.get('owner', 'someone else')}", winner, at)

    def write_record(self, job: Job, wait: bool = True, record: dict[str, Any] | None = None) -> None:
        """Write a job's record (`record`: its to_record(), when the caller has it already); writes of one job
        from this process land in the order they were made."""
        self.settle(job.id)
        value = record if record is not None else job.to_record()
        if wait:
            self.d.put(keys.job(job.id), value)
            changes.announce(job.id)
            return
        future = submit(lambda: (self.d.put(keys.job(job.id), value), changes.announce(job.id)))
        with self._pending_lock:
            self._pending[job.id] = future

    def settle(self, job_id: str | None = None) -> None:
        """Wait for deferred record writes (of one job, or all of this process's). A write is forgotten only
        once it has landed, so a second thread settling the same job waits for it too."""
        with self._pending_lock:
            pending = [(job_id, self._pending.get(job_id))] if job_id else list(self._pending.items())
        for jid, future in pending:
            if future is None:
                continue
            future.result()
            with self._pending_lock:
                if self._pending.get(jid) is future:
                    del self._pending[jid]

    def refuse_start(self, job: Job) -> None:
        """Take the job's next move with no outcome, so nobody can make it (a submission being undone)."""
        entry = {"owner": "undo", "at": self.clock().isoformat(), "nonce": uuid.uuid4().hex, "outcome": None}
        self.d.put(keys.claim(job.id, job.claim_seq + 1), entry, skip_if_exists=True)

    def claim_entry(self, job_id: str, n: int) -> dict[str, Any] | None:
        return self.d.get(keys.claim(job_id, n))

    # --- a running attempt's heartbeat and progress --------------------------------------------

    def write_progress(self, job: Job, progress: Progress | None, events: list[dict[str, Any]],
                       outputs: list[Output] | None = None, preview: dict[str, Any] | None = None) -> Job | None:
        """The running attempt's heartbeat (and progress, the outputs stored so far, and its newest preview
        frame), keyed by its claim; returns the record as it stands, so the owner sees if the job moved on.
        One round trip."""
        live: dict[str, Any] = {"claim": job.claim_seq, "heartbeat_at": self.clock().isoformat(),
                                "progress": progress.model_dump(mode="json") if progress is not None else None,
                                "events": events[-PROGRESS_EVENTS_KEPT:]}
        if outputs:
            live["outputs"] = [o.model_dump(mode="json", exclude={"url"}) for o in outputs]
        entries = {keys.progress(job.id): live, **({keys.preview(job.id): preview} if preview is not None else {})}
        _, record = run_all([lambda: self.d.update(entries), lambda: self.d.get(keys.job(job.id))])
        return None if record is None else Job.model_validate(record)

    def progress_events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Progress events with seq > after, oldest first (the newest few hundred are kept)."""
        live = self.d.get(keys.progress(job_id)) or {}
        return [e for e in live.get("events") or [] if e["seq"] > after]

    def watch(self, job_id: str, after: int = 0) -> tuple[Job | None, list[dict[str, Any]]]:
        """The job (as get() gives it) and its progress events with seq > after, from one round trip: what an
        event stream looks at on each poll."""
        record, live = run_all([lambda: self.d.get(keys.job(job_id)), lambda: self.d.get(keys.progress(job_id))])
        return _merge(record, live), [e for e in (live or {}).get("events") or [] if e["seq"] > after]

    def latest_preview(self, job_id: str) -> dict[str, Any] | None:
        """The newest preview frame of the running attempt: {"seq", "format" (jpeg|png), "data_b64"}, or None."""
        return self.d.get(keys.preview(job_id))

    # --- cancel --------------------------------------------------------------------------------

    def cancel_requested(self, job_id: str) -> bool:
        return self.d.contains(keys.cancel(job_id))

    def flag_cancel(self, job_id: str) -> None:
        """Ask whoever runs the job to stop it (a live worker polls this flag)."""
        self.d.put(keys.cancel(job_id), self.clock().isoformat())

    # --- webhook deliveries (one per terminal event; states in deliveries.py, sending in webhooks.py) ---

    def register_webhook(self, delivery: dict[str, Any]) -> bool:
        """Store a new delivery once; True if this call created it."""
        return self.d.put(keys.webhook(delivery["job_id"]), delivery, skip_if_exists=True)

    def webhook(self, job_id: str) -> dict[str, Any] | None:
        return self.d.get(keys.webhook(job_id))

    def webhooks(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        return run_all([lambda j=j: self.d.get(keys.webhook(j)) for j in job_ids])

    def save_webhook(self, delivery: dict[str, Any]) -> None:
        self.d.put(keys.webhook(delivery["job_id"]), delivery)

    def claim_webhook_attempt(self, job_id: str, n: int, owner: str) -> bool:
        """Exactly one sender makes attempt n of a job's delivery."""
        nonce = uuid.uuid4().hex
        entry = {"owner": owner, "at": self.clock().isoformat(), "nonce": nonce}
        if self.d.put(keys.webhook_attempt(job_id, n), entry, skip_if_exists=True):
            return True
        return (self.webhook_attempt_claim(job_id, n) or {}).get("nonce") == nonce

    def webhook_attempt_claim(self, job_id: str, n: int) -> dict[str, Any] | None:
        return self.d.get(keys.webhook_attempt(job_id, n))

    # --- the deployed ComfyUI's node catalogue, for pre-flight validation ------------------------

    def save_object_info(self, schema: dict[str, Any], pool: str | None = None) -> None:
        pool = pool or self.settings.default_pool
        self.d.put(keys.object_info(pool), schema)
        self._catalogues[pool] = (time.monotonic() + CATALOGUE_TTL_S, schema)

    def object_info(self, pool: str | None = None, fresh: bool = False,
                    durable: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any] | None:
        """A pool's node catalogue, as its workers last published it. Kept in memory for CATALOGUE_TTL_S (a
        missing one for a second), so a submit does not pay a round trip for it: it changes only when a worker
        with other nodes starts. `fresh` reads it again; `durable` is asked when the Dict has none (its copy
        expired), and what it gives is put back."""
        pool = pool or self.settings.default_pool
        expires, schema = self._catalogues.get(pool, (0.0, None))
        if time.monotonic() < expires and not fresh:
            return schema
        schema = self.d.get(keys.object_info(pool))
        if schema is None and durable is not None and (schema := durable()) is not None:
            self.d.put(keys.object_info(pool), schema, skip_if_exists=True)  # a worker may publish meanwhile
        self._catalogues[pool] = (time.monotonic() + (CATALOGUE_TTL_S if schema is not None else 1.0), schema)
        return schema

    # --- the work queue ------------------------------------------------------------------------

    def enqueue(self, job: Job, payload: dict[str, Any] | None = None) -> None:
        """Wake a worker of the job's pool; never blocks (a full partition is QueueFull). One round trip.

        The wake-up carries the job as it stands, so a worker can start it without reading it first, and its
        payload when both are small (the worker then sends the prompt while it claims the attempt; else it reads
        the payload with its claim): a partition holds 64 MiB as well as 5,000 items, and only small items let
        5,000 fit. A record too large to ride along goes as its id alone, after its own write has landed (see
        carries_record)."""
        item = self.wakeup_item(job, payload)
        if "job" not in item:
            self.settle(job.id)
        try:
            self._q.put(item, block=False, partition=keys.partition(job.pool))
        except queue.Full:
            raise QueueFull(f"the {job.pool!r} work queue is full; retry later", retry_after_s=10) from None

    def wakeup_item(self, job: Job, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """The queue item that wakes a worker for `job`: its id, when it was sent, its record if it fits, and the
        payload too if record and payload together fit the same budget."""
        item: dict[str, Any] = {"id": job.id, "at": self.clock().timestamp()}
        record = job.to_record()
        size = _json_size(record)
        if size <= WAKEUP_RECORD_MAX_BYTES:
            item["job"] = record
            if payload is not None and size + _json_size(payload) <= WAKEUP_RECORD_MAX_BYTES:
                item["payload"] = payload
        return item

    @staticmethod
    def carries_record(job: Job) -> bool:
        """Whether the job's wake-up carries its record (else the record must be stored before it is sent)."""
        return _json_size(job.to_record()) <= WAKEUP_RECORD_MAX_BYTES

    def next_wakeup(self, pool: str, timeout_s: float) -> Wakeup | None:
        """The next wake-up from a pool's queue, or None after timeout_s."""
        try:
            item = self._q.get(timeout=timeout_s, partition=keys.partition(pool))
        except queue.Empty:
            return None
        if isinstance(item, str):  # a wake-up written before they carried the job
            return Wakeup(item, None, 0.0)
        record = item.get("job")
        return Wakeup(item["id"], None if record is None else Job.model_validate(record), float(item.get("at", 0.0)),
                      item.get("payload"))

    def next_job_id(self, pool: str, timeout_s: float) -> str | None:
        """The next woken job's id, or None after timeout_s."""
        wakeup = self.next_wakeup(pool, timeout_s)
        return None if wakeup is None else wakeup.job_id

    def queue_depth(self, pool: str | None = None) -> int:
        if pool is None:
            return self._q.len(total=True)
        return self._q.len(partition=keys.partition(pool))

    def note_taken(self, job: Job) -> None:
        """Remember `job` as the latest one its pool's workers took: the jobs still waiting there were (nearly
        all) listed after it, which bounds a queued job's place (see v2/views.py queue_position)."""
        if keys.ALL in job.index_slots:
            self.d.put(keys.taken_slot(job.pool), job.index_slots[keys.ALL])

    def taken_slot(self, pool: str) -> int:
        """The `all` listing slot of the latest job the pool's workers took; 0 before any (slots start at 1)."""
        return self.d.get(keys.taken_slot(pool)) or 0

    # --- counters (one shard per process; see counters.py) -----------------------------------------

    def save_counters(self, counters: Counters) -> None:
        """Write this process's counter shard (registering it once, and moving to a fresh one when due: see
        jobs/counters.py); skipped while another write of it runs."""
        if not counters.flushing.acquire(blocking=False):
            return
        try:
            counters.rotate_if_due()
            version, shard = counters.snapshot()
            if not counters.registered and not shard["counts"]:
                return  # nothing counted yet: no shard to keep
            # Written before it is registered, so a registered shard with no value is one deleted or expired.
            self.d.put(keys.metrics_shard(counters.shard), shard)
            if not counters.registered:
                n = self.index.claim(keys.METRICS, counters.shard, self.index.head_hint(keys.METRICS))
                counters.mark_registered()  # before moving the hint, whose failure must not register it twice
                self.d.put(keys.index_head(keys.METRICS), n)
            counters.flushed(version, shard["counts"])
        finally:
            counters.flushing.release()

    def counter_registry(self) -> CounterRegistry:
        """The registered counter shards at or above the registry's low mark, and the rollup. Three round
        trips: the low mark and the head hint; the registry's slots; the rollup with the shards (read
        together, so a fold between them cannot hide counts from both)."""
        low, hint = run_all([lambda: self.state("metrics_low", 1), lambda: self.index.head_hint(keys.METRICS)])
        head, seen = self.index.newest(keys.METRICS, hint - low + 1, hint=hint, low=low)
        slots = {n: seen.get(n) for n in range(low, head + 1)}
        names = list(dict.fromkeys(name for name in slots.values() if name))  # a name twice is one shard
        got = run_all([lambda: self.state("metrics_rollup", {}),
                       *(lambda name=name: self.d.get(keys.metrics_shard(name)) for name in names)])
        return CounterRegistry(low, slots, got[0] or {}, dict(zip(names, got[1:], strict=True)))

    # --- maintenance state and deletion --------------------------------------------------------

    def state(self, name: str, default: Any = None) -> Any:
        return self.d.get(keys.maintenance(name), default)

    def save_state(self, name: str, value: Any) -> None:
        self.d.put(keys.maintenance(name), value)

    def delete_job(self, job: Job) -> None:
        """Remove a job and everything kept for it from the Dict, its listing slots included; idempotent (one
        to four round trips)."""
        doomed = [keys.job(job.id), keys.payload(job.id), keys.cancel(job.id), keys.progress(job.id),
                  keys.preview(job.id), keys.webhook(job.id), keys.native_prompt(job.id), keys.native_extra(job.id),
                  *(keys.claim(job.id, n) for n in range(1, job.claim_seq + 2)),
                  *(keys.index_slot(scope, n) for scope, n in job.index_slots.items())]
        doomed += self.quotas.handovers(job)
        if job.webhook_url:
            doomed += [keys.webhook_attempt(job.id, n) for n in range(1, self.settings.webhook_max_attempts + 2)]
        calls: list[Callable[[], Any]] = [lambda k=k: self.d.pop(k, None) for k in doomed]
        if job.idempotency_key:  # a later submission may hold the key by now: release ours only
            calls.append(lambda: self.idempotency.drop(job.user_id, job.idempotency_key or "", job.id))
        run_all(calls)

    # --- listing -------------------------------------------------------------------------------

    def list_jobs(self, *, user_id: str | None = None, status: Status | None = None,
                  cursor: str | None = None, limit: int = 20) -> Page:
        """Newest first, `limit` per page; `cursor` comes from the previous page's next_cursor. The first
        page costs two round trips in a process that has seen the scope's head (the hint with the slots around
        it; the jobs), three in one that has not (the hint first); later pages two (slots, jobs)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        scope = keys.scope(user_id)
        known: dict[int, Any] = {}
        n = _parse_cursor(cursor) if cursor is not None else 0
        if cursor is None:
            n, known = self.index.newest(scope, limit)
        budget = limit * (_FILTER_SCAN_FACTOR if status else 1)
        jobs: list[Job] = []
        while n >= 1 and len(jobs) < limit and budget > 0:
            take = min(budget, limit if status else limit - len(jobs))
            numbers = list(range(n, max(0, n - take), -1))
            if missing := [k for k in numbers if k not in known]:
                known.update(zip(missing, self.index.slots(scope, missing), strict=True))
            ids = [known[k] for k in numbers]
            n, budget = numbers[-1] - 1, budget - len(numbers)
            for job in self.get_many(ids):
                if job is not None and (status is None or job.status is status) and len(jobs) < limit:
                    jobs.append(job)
        return Page(jobs=jobs, next_cursor=str(n) if n >= 1 else None)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _merge(record: dict[str, Any] | None, live: dict[str, Any] | None) -> Job | None:
    """A record with its running attempt's heartbeat and progress, when they belong to the same attempt."""
    if record is None:
        return None
    job = Job.model_validate(record)
    if live and job.status is Status.RUNNING and live.get("claim") == job.claim_seq:
        job.heartbeat_at = datetime.fromisoformat(live["heartbeat_at"])
        if live.get("progress") is not None:
            job.progress = Progress.model_validate(live["progress"])
        if live.get("outputs"):  # stored while the prompt still runs; the record gets them all at the end
            job.outputs = [Output.model_validate(o) for o in live["outputs"]]
    return job


def _parse_cursor(cursor: str) -> int:
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise InvalidInput("cursor is not one this API returned", field="cursor")
    return int(cursor)


def _stamps(job: Job, target: Status, now: datetime) -> dict[str, Any]:
    """Fields a status change sets by rule, so callers cannot forget them."""
    if target is Status.RUNNING:
        return {"attempts": job.attempts + 1, "started_at": now, "heartbeat_at": now, "error": None}
    if target is Status.QUEUED:
        return {"worker_id": None, "heartbeat_at": None, "progress": None}
    return {"finished_at": now}
