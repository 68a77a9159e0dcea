"""The job store and work queue over any modal.Dict / modal.Queue pair (or their local twins).

The Dict is the source of truth; the Queue only carries job ids as a wake-up. Dict has no
compare-and-swap, so every "exactly one wins" decision is a `put(..., skip_if_exists=True)`:
claiming an attempt (`claim:{id}:{n}`), the terminal outcome (`terminal:{id}`), idempotency keys,
and index slots. Every key format lives in `Keys`, and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from errors import Conflict, IllegalTransition, InvalidInput, NotFound, NotOwner, Overloaded, QueueFull
from models import (
    TERMINAL_STATUSES,
    Job,
    JobError,
    JobRequest,
    Progress,
    Status,
    check_transition,
    new_job,
    new_job_id,
    utcnow,
)
from settings import Settings


class DictLike(Protocol):
    def get(self, key: Any, default: Any = None) -> Any: ...
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...
    def pop(self, key: Any, default: Any = ...) -> Any: ...
    def contains(self, key: Any) -> bool: ...


class QueueLike(Protocol):
    def put(self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None
            ) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any: ...
    def len(self, *, partition: str | None = None, total: bool = False) -> int: ...


class Keys:
    """Every key format: Dict keys for jobs and their bookkeeping, and object keys for outputs."""

    ALL = "all"

    @staticmethod
    def job(job_id: str) -> str:
        return f"job:{job_id}"

    @staticmethod
    def payload(job_id: str) -> str:
        return f"payload:{job_id}"

    @staticmethod
    def claim(job_id: str, n: int) -> str:
        return f"claim:{job_id}:{n}"

    @staticmethod
    def terminal(job_id: str) -> str:
        return f"terminal:{job_id}"

    @staticmethod
    def cancel(job_id: str) -> str:
        return f"cancel:{job_id}"

    @staticmethod
    def idempotency(user_id: str | None, key: str) -> str:
        # Hashed so user ids and keys may contain the separator without colliding.
        digest = hashlib.sha256(f"{user_id or ''}\0{key}".encode()).hexdigest()
        return f"idem:{digest}"

    @staticmethod
    def scope(user_id: str | None) -> str:
        return Keys.ALL if user_id is None else f"user:{user_id}"

    @staticmethod
    def index_slot(scope: str, n: int) -> str:
        return f"idx:{scope}:{n}"

    @staticmethod
    def index_head(scope: str) -> str:
        return f"idxhead:{scope}"

    @staticmethod
    def sweep_low_water() -> str:
        return "sweep:low"

    @staticmethod
    def sweep_cursor() -> str:
        return "sweep:cursor"

    @staticmethod
    def cleanup_low_water() -> str:
        return "cleanup:low"

    WEBHOOKS = "webhooks"

    @staticmethod
    def webhook(job_id: str) -> str:
        return f"webhook:{job_id}"

    @staticmethod
    def webhook_attempt(job_id: str, n: int) -> str:
        return f"whattempt:{job_id}:{n}"

    @staticmethod
    def webhook_low_water() -> str:
        return "webhooks:low"

    @staticmethod
    def active_slot(scope: str, n: int) -> str:
        return f"active:{scope}:{n}"

    @staticmethod
    def progress_events(job_id: str) -> str:
        return f"events:{job_id}"

    @staticmethod
    def object_info() -> str:
        return "object_info"

    @staticmethod
    def partition(pool: str) -> str:
        return pool

    @staticmethod
    def output(job_id: str, node_id: str, filename: str) -> str:
        return f"{job_id}/{node_id}/{filename}"

    @staticmethod
    def output_prefix(job_id: str) -> str:
        return f"{job_id}/"


class SlotIndex:
    """Append-only numbered slots per scope, read newest first; costs O(page), never a scan.

    A writer claims `idx:{scope}:{n}` with skip_if_exists, so concurrent writers get distinct slots.
    The head hint may lag (racing writers); readers correct it by probing forward.
    """

    def __init__(self, d: DictLike) -> None:
        self._d = d

    def append(self, scope: str, job_id: str) -> int:
        n = self.head(scope) + 1
        while not self._d.put(Keys.index_slot(scope, n), job_id, skip_if_exists=True):
            n += 1
        self._d.put(Keys.index_head(scope), n)
        return n

    def head(self, scope: str) -> int:
        n = self._d.get(Keys.index_head(scope)) or 0
        while self._d.contains(Keys.index_slot(scope, n + 1)):
            n += 1
        return n

    def slot(self, scope: str, n: int) -> str | None:
        return self._d.get(Keys.index_slot(scope, n))


@dataclass
class Page:
    jobs: list[Job]
    next_cursor: str | None


MAX_PAGE = 100
_ORPHAN_PROBES = 3  # how many orphaned claims in a row a claimer steps over
PROGRESS_EVENTS_KEPT = 300
# With a status filter a page may need more slots than its size; bound the work and hand back a cursor.
_FILTER_SCAN_FACTOR = 5


def past_finished_prefix(slots: list[tuple[int, Any]], finished: Callable[[Any], bool]) -> int | None:
    """The slot after the longest run of finished entries at the start of `slots` (a new low-water
    mark), or None when the first entry is unfinished."""
    mark = None
    for n, entry in slots:
        if not finished(entry):
            break
        mark = n + 1
    return mark


def _request_digest(request: JobRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class JobStore:
    """Jobs over a Dict/Queue pair; `transition()` is the one gateway for every status write."""

    def __init__(self, jobs: DictLike, work: QueueLike, settings: Settings,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._d = jobs
        self._q = work
        self.settings = settings
        self._clock = clock
        self._index = SlotIndex(jobs)

    # --- submit and read ---------------------------------------------------------------------

    def submit(self, request: JobRequest) -> tuple[Job, bool]:
        """Store and enqueue a validated request; (job, created). A repeated idempotency key returns
        the first job with created=False."""
        job_id = new_job_id()
        if request.idempotency_key and not self._claim_idempotency(request, job_id):
            return self._idempotent_original(request), False
        try:
            slots = self._acquire_quota(job_id, request.user_id)
        except Overloaded:
            self._forget_idempotency(request)
            raise
        job = new_job(request, job_id, self.settings.default_pool, self._clock())
        job.active_slots = slots
        self._d.put(Keys.payload(job_id), request.model_dump(mode="json", include={"workflow", "media", "overrides"}))
        self._d.put(Keys.job(job_id), job.to_record())
        self._index.append(Keys.ALL, job_id)
        if job.user_id is not None:
            self._index.append(Keys.scope(job.user_id), job_id)
        self._enqueue_new(job, request)
        return job, True

    def _acquire_quota(self, job_id: str, user_id: str | None) -> dict[str, int]:
        caps = [(Keys.ALL, self.settings.max_active_jobs)]
        if user_id is not None:
            caps.append((Keys.scope(user_id), self.settings.max_active_jobs_per_user))
        taken: dict[str, int] = {}
        for scope, cap in caps:
            if cap <= 0:
                continue
            n = self.acquire_active(scope, cap, job_id)
            if n is None:
                for held_scope, held in taken.items():
                    self._d.pop(Keys.active_slot(held_scope, held), None)
                who = "this user" if scope != Keys.ALL else "the service"
                raise Overloaded(f"{who} already has {cap} active jobs; retry when some finish", retry_after_s=10)
            taken[scope] = n
        return taken

    def _forget_idempotency(self, request: JobRequest) -> None:
        if request.idempotency_key:
            self._d.pop(Keys.idempotency(request.user_id, request.idempotency_key), None)

    def _claim_idempotency(self, request: JobRequest, job_id: str) -> bool:
        key = Keys.idempotency(request.user_id, request.idempotency_key or "")
        return self._d.put(key, {"job_id": job_id, "digest": _request_digest(request)}, skip_if_exists=True)

    def _idempotent_original(self, request: JobRequest, wait_s: float = 5.0) -> Job:
        entry = self._d.get(Keys.idempotency(request.user_id, request.idempotency_key or "")) or {}
        if entry.get("digest") != _request_digest(request):
            raise Conflict("idempotency_key was already used with a different request")
        deadline = time.monotonic() + wait_s
        while (job := self.get(entry["job_id"])) is None:  # the winner may not have written it yet
            if time.monotonic() > deadline:
                raise Overloaded("the original request with this idempotency_key did not complete; retry")
            time.sleep(0.01)
        return job

    def _enqueue_new(self, job: Job, request: JobRequest) -> None:
        try:
            self.enqueue(job)
        except QueueFull:
            # Nothing half-stored: the index slot stays but points at nothing, and listing skips it.
            for key in (Keys.job(job.id), Keys.payload(job.id)):
                self._d.pop(key, None)
            self.release_active(job)
            self._forget_idempotency(request)
            raise

    def enqueue(self, job: Job) -> None:
        """Wake a worker of the job's pool; never blocks (a full partition is QueueFull)."""
        try:
            self._q.put(job.id, block=False, partition=Keys.partition(job.pool))
        except queue.Full:
            raise QueueFull(f"the {job.pool!r} work queue is full; retry later", retry_after_s=10) from None

    def next_job_id(self, pool: str, timeout_s: float) -> str | None:
        """The next job id from a pool's queue, or None after timeout_s."""
        try:
            return self._q.get(timeout=timeout_s, partition=Keys.partition(pool))
        except queue.Empty:
            return None

    def queue_depth(self, pool: str | None = None) -> int:
        if pool is None:
            return self._q.len(total=True)
        return self._q.len(partition=Keys.partition(pool))

    def get(self, job_id: str) -> Job | None:
        record = self._d.get(Keys.job(job_id))
        return None if record is None else Job.model_validate(record)

    def require(self, job_id: str, user_id: str | None = None) -> Job:
        """The job, or NotFound (also when it belongs to another user than `user_id`)."""
        job = self.get(job_id)
        if job is None or (user_id is not None and job.user_id != user_id):
            raise NotFound(f"no job {job_id!r}")
        return job

    def payload(self, job_id: str) -> dict[str, Any]:
        """The workflow, media and overrides of a job."""
        body = self._d.get(Keys.payload(job_id))
        if body is None:
            raise NotFound(f"no workflow stored for job {job_id!r}")
        return body

    # --- ownership and status ----------------------------------------------------------------

    def claim(self, job: Job, owner: str) -> int | None:
        """Try to own the next attempt of `job` as read by the caller; the claim number, or None
        if someone else got there first."""
        now = self._clock()
        for n in range(job.claim_seq + 1, job.claim_seq + 1 + _ORPHAN_PROBES):
            if self._d.put(Keys.claim(job.id, n), {"owner": owner, "at": now.isoformat()}, skip_if_exists=True):
                return n
            if not self._orphaned(job, n, now):
                return None
        return None

    def _orphaned(self, job: Job, n: int, now: datetime) -> bool:
        """A claim on a job that is still queued long after it was made: its owner died between winning
        the claim and writing `running`, and nobody else could ever claim the job again."""
        entry = self._d.get(Keys.claim(job.id, n)) or {}
        made = datetime.fromisoformat(entry.get("at", now.isoformat()))
        return job.status is Status.QUEUED and (now - made).total_seconds() > self.settings.heartbeat_stale_s

    def claim_owner(self, job_id: str, n: int) -> str | None:
        entry = self._d.get(Keys.claim(job_id, n))
        return None if entry is None else entry["owner"]

    def transition(self, job_id: str, target: Status, *, claim: int, **changes: Any) -> Job:
        """Move a job to `target` as the holder of claim number `claim`; the only status writer.

        Raises IllegalTransition for moves the lifecycle forbids (and for a second terminal outcome),
        NotOwner when the claim has been superseded."""
        job = self.require(job_id)
        check_transition(job.status, target)
        self._check_claim(job, claim)
        now = self._clock()
        updated = job.model_copy(update={"status": target, "claim_seq": claim, "updated_at": now,
                                         **_stamps(job, target, now), **changes})
        updated = Job.model_validate(updated.model_dump())  # validate the changes, not just copy them
        if target in TERMINAL_STATUSES:
            return self._write_terminal(updated)
        return self._write(updated)

    def _check_claim(self, job: Job, claim: int) -> None:
        if claim == job.claim_seq and claim > 0:
            return
        if job.claim_seq < claim <= job.claim_seq + _ORPHAN_PROBES and self._d.contains(Keys.claim(job.id, claim)):
            return
        raise NotOwner(f"claim {claim} does not own job {job.id} (current claim {job.claim_seq})")

    def _write_terminal(self, job: Job) -> Job:
        if not self._d.put(Keys.terminal(job.id), job.to_record(), skip_if_exists=True):
            raise IllegalTransition(f"job {job.id} already reached a terminal state")
        self._d.put(Keys.job(job.id), job.to_record())
        # Side effects of the one terminal outcome, done once by its winner.
        self.release_active(job)
        if job.webhook_url:
            self._register_webhook(job)
        return job

    # --- webhook deliveries (one per terminal event; dispatched by webhooks.py) ------------------

    def _register_webhook(self, job: Job) -> None:
        now = self._clock().isoformat()
        delivery = {"job_id": job.id, "event": f"job.{job.status.value}", "msg_id": f"msg_{job.id}",
                    "url": job.webhook_url, "state": "pending", "attempts": [], "next_at": now, "created_at": now}
        if self._d.put(Keys.webhook(job.id), delivery, skip_if_exists=True):
            self._index.append(Keys.WEBHOOKS, job.id)

    def webhook(self, job_id: str) -> dict[str, Any] | None:
        return self._d.get(Keys.webhook(job_id))

    def save_webhook(self, delivery: dict[str, Any]) -> None:
        self._d.put(Keys.webhook(delivery["job_id"]), delivery)

    def claim_webhook_attempt(self, job_id: str, n: int, owner: str) -> bool:
        """Exactly one sender makes attempt n of a job's delivery."""
        return self._d.put(Keys.webhook_attempt(job_id, n), {"owner": owner, "at": self._clock().isoformat()},
                           skip_if_exists=True)

    def webhook_attempt_claim(self, job_id: str, n: int) -> dict[str, Any] | None:
        return self._d.get(Keys.webhook_attempt(job_id, n))

    def pending_webhooks(self, max_slots: int) -> list[tuple[int, dict[str, Any] | None]]:
        """Deliveries from the webhook low-water mark towards the newest, oldest first."""
        low = self._d.get(Keys.webhook_low_water()) or 1
        return self._slots(Keys.WEBHOOKS, low, low + max_slots - 1, self.webhook)

    def raise_webhook_low_water(self, slot: int) -> None:
        self._d.put(Keys.webhook_low_water(), slot)

    # --- active-job quotas: numbered slots claimed with skip_if_exists ---------------------------

    def acquire_active(self, scope: str, capacity: int, job_id: str, probes: int = 32) -> int | None:
        """Take one of `capacity` active slots for job_id; None when all probed slots are busy. A slot
        whose job has finished (its release was lost) is taken over."""
        start = random.randrange(capacity)
        for i in range(min(capacity, probes)):
            n = (start + i) % capacity
            key = Keys.active_slot(scope, n)
            if self._d.put(key, job_id, skip_if_exists=True):
                return n
            holder = self._d.get(key)
            held = self.get(holder) if holder else None
            # A holder with no record yet is a submit in flight, not a leak.
            if held is not None and held.terminal and self._d.pop(key, None) is not None \
                    and self._d.put(key, job_id, skip_if_exists=True):
                return n
        return None

    def release_active(self, job: Job) -> None:
        for scope, n in (job.active_slots or {}).items():
            if self._d.get(Keys.active_slot(scope, n)) == job.id:
                self._d.pop(Keys.active_slot(scope, n), None)

    def _write(self, job: Job) -> Job:
        self._d.put(Keys.job(job.id), job.to_record())
        # No CAS: if a terminal outcome won meanwhile, put it back so the record never regresses.
        final = self._d.get(Keys.terminal(job.id))
        if final is not None:
            self._d.put(Keys.job(job.id), final)
            raise IllegalTransition(f"job {job.id} already reached a terminal state")
        return job

    def record_progress(self, job_id: str, claim: int, progress: Progress | None = None) -> Job:
        """Heartbeat (and optionally progress) from the owner of a running attempt."""
        job = self.require(job_id)
        if job.status is not Status.RUNNING or claim != job.claim_seq:
            raise NotOwner(f"claim {claim} no longer runs job {job_id}")
        changes: dict[str, Any] = {"heartbeat_at": self._clock(), "updated_at": self._clock()}
        if progress is not None:
            changes["progress"] = progress
            self._append_progress_event(job_id, progress)
        return self._write(job.model_copy(update=changes))

    def _append_progress_event(self, job_id: str, progress: Progress) -> None:
        # Only the claim owner writes progress, so this read-modify-write has one writer.
        log = self._d.get(Keys.progress_events(job_id)) or []
        seq = log[-1]["seq"] + 1 if log else 1
        log.append({"seq": seq, "at": self._clock().isoformat(), "progress": progress.model_dump(mode="json")})
        self._d.put(Keys.progress_events(job_id), log[-PROGRESS_EVENTS_KEPT:])

    def progress_events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Progress events with seq > after, oldest first (the newest few hundred are kept)."""
        return [e for e in self._d.get(Keys.progress_events(job_id)) or [] if e["seq"] > after]

    # --- cancel ------------------------------------------------------------------------------

    def request_cancel(self, job_id: str, user_id: str | None = None) -> Job:
        """Flag the job for cancellation; a queued job nobody owns yet is cancelled right here."""
        job = self.require(job_id, user_id)
        if job.terminal:
            return job
        self.flag_cancel(job_id)
        if job.status is Status.QUEUED and (n := self.claim(job, "api:cancel")) is not None:
            error = JobError(type="cancelled", message="cancelled before it started")
            return self.transition(job_id, Status.CANCELLED, claim=n, error=error)
        return self.require(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self._d.contains(Keys.cancel(job_id))

    def flag_cancel(self, job_id: str) -> None:
        """Ask whoever runs the job to stop it (a live worker polls this flag)."""
        self._d.put(Keys.cancel(job_id), self._clock().isoformat())

    # --- the deployed ComfyUI's node catalogue, for pre-flight validation ------------------------

    def save_object_info(self, schema: dict[str, Any]) -> None:
        self._d.put(Keys.object_info(), schema)
        self._object_info = (time.monotonic(), schema)

    def object_info(self, max_age_s: float = 0.0) -> dict[str, Any] | None:
        """The captured catalogue; with max_age_s, a copy read at most that long ago (it is large)."""
        cached = getattr(self, "_object_info", None)
        if cached is None or time.monotonic() - cached[0] > max_age_s:
            cached = (time.monotonic(), self._d.get(Keys.object_info()))
            self._object_info = cached
        return cached[1]

    # --- the sweeper's window ----------------------------------------------------------------

    def active_window(self, max_slots: int) -> tuple[bool, list[tuple[int, Job | None]]]:
        """Up to max_slots index slots between the low-water mark and the head, where every unfinished
        job lives; consecutive calls rotate through a window wider than max_slots. (starts at low, slots)"""
        low = self._d.get(Keys.sweep_low_water()) or 1
        head = self._index.head(Keys.ALL)
        start = max(low, self._d.get(Keys.sweep_cursor()) or low)
        if start > head:
            start = low
        end = min(head, start + max_slots - 1)
        self._d.put(Keys.sweep_cursor(), end + 1)
        return start == low, self._slots(Keys.ALL, start, end, self.get)

    def oldest(self, max_slots: int) -> list[tuple[int, Job | None]]:
        """The oldest index slots not yet cleaned up, oldest first."""
        low = self._d.get(Keys.cleanup_low_water()) or 1
        return self._slots(Keys.ALL, low, low + max_slots - 1, self.get)

    def _slots(self, scope: str, start: int, end: int, load: Callable[[str], Any]) -> list[tuple[int, Any]]:
        """(slot, loaded record or None) for slots start..end of a scope, stopping at its head."""
        out = []
        for n in range(start, min(end, self._index.head(scope)) + 1):
            job_id = self._index.slot(scope, n)
            out.append((n, load(job_id) if job_id else None))
        return out

    def delete_job(self, slot: int, job: Job | None) -> None:
        """Remove a finished job and everything kept for it; idempotent. Advances the cleanup mark."""
        if job is not None:
            keys = [Keys.job(job.id), Keys.payload(job.id), Keys.terminal(job.id), Keys.cancel(job.id),
                    Keys.progress_events(job.id),
                    *(Keys.claim(job.id, n) for n in range(1, job.claim_seq + 2))]
            if job.idempotency_key:
                keys.append(Keys.idempotency(job.user_id, job.idempotency_key))
            delivery = self._d.pop(Keys.webhook(job.id), None)
            if delivery is not None:
                keys += [Keys.webhook_attempt(job.id, n) for n in range(1, len(delivery["attempts"]) + 2)]
            for key in keys:
                self._d.pop(key, None)
        self._d.pop(Keys.index_slot(Keys.ALL, slot), None)
        self._d.put(Keys.cleanup_low_water(), slot + 1)

    def raise_low_water(self, slot: int) -> None:
        """Everything below `slot` is finished; the next sweep starts there."""
        self._d.put(Keys.sweep_low_water(), slot)

    # --- listing -----------------------------------------------------------------------------

    def list_jobs(self, *, user_id: str | None = None, status: Status | None = None,
                  cursor: str | None = None, limit: int = 20) -> Page:
        """Newest first, `limit` per page; `cursor` comes from the previous page's next_cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        scope = Keys.scope(user_id)
        n = self._index.head(scope) if cursor is None else _parse_cursor(cursor)
        budget = limit * (_FILTER_SCAN_FACTOR if status else 1)
        jobs: list[Job] = []
        while n >= 1 and len(jobs) < limit and budget > 0:
            job_id, n, budget = self._index.slot(scope, n), n - 1, budget - 1
            job = self.get(job_id) if job_id else None
            if job is not None and (status is None or job.status is status):
                jobs.append(job)
        return Page(jobs=jobs, next_cursor=str(n) if n >= 1 else None)


def _parse_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidInput("cursor is not one this API returned", field="cursor")
    return int(cursor)


def _stamps(job: Job, target: Status, now: datetime) -> dict[str, Any]:
    """Fields a status change sets by rule, so callers cannot forget them."""
    if target is Status.RUNNING:
        return {"attempts": job.attempts + 1, "started_at": now, "heartbeat_at": now, "error": None}
    if target is Status.QUEUED:
        return {"worker_id": None, "heartbeat_at": None, "progress": None}
    return {"finished_at": now}
