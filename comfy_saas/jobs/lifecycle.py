"""Every move a job makes, each as one named operation. Worker, sweeper, operator commands and the API
call these; none of them assembles a move of its own.

    create      -> queued            the endpoint: record, index, quota, idempotency key, wake-up
    start       queued -> running    a worker: wins the attempt
    heartbeat   (running)            the owner: heartbeat and progress under their own key
    finish      running -> terminal  the owner: the outcome
    release     running -> queued | failed      the owner, when its ComfyUI went away
    take_over   queued | running -> queued | failed | cancelled   sweeper, operators, cancel
    cancel      flag, and for a queued job the cancelled outcome at once
    repair      a move whose winner died before writing it: write it, redo its consequences

Each move is claim (with its outcome) -> record -> consequences: a wake-up for a job queued again, and for
a terminal outcome its side effects (quota slots back, the webhook delivery registered and its first
attempt started). Only one move from a given record can win; every consequence is idempotent, and
`repair` re-runs them when a crash cut them short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from comfy_saas import logs
from comfy_saas.backends.parallel import run_all, settle_all, submit
from comfy_saas.config import Settings
from comfy_saas.errors import ComfySaasError, Conflict, Overloaded
from comfy_saas.jobs import keys
from comfy_saas.jobs.counters import Counters
from comfy_saas.jobs.deliveries import new_delivery
from comfy_saas.jobs.model import Job, JobError, Output, Progress, Status, new_job_id
from comfy_saas.jobs.request import JobRequest, new_job
from comfy_saas.jobs.store import Decided, JobStore

log = logging.getLogger(__name__)

CANCELLED_QUEUED = JobError(type="cancelled", message="cancelled before it started")
# A move's winner writes its record within a round trip or two; one that has not after this long is gone.
REPAIR_AFTER_S = 10.0


class AttemptMoved(ComfySaasError):
    """The attempt a worker holds was decided elsewhere (taken over, cancelled, finished)."""

    type = "attempt_moved"


@dataclass
class _Reserved:
    """What a submission reserved: quota slots, index slots, and the quota scope that was full, if one was."""

    quota: dict[str, int]
    slots: dict[str, int]
    full: tuple[str, int] | None


class Lifecycle:
    """The named moves over one store. `on_delivery(job_id, owner)` starts a webhook's first attempt."""

    def __init__(self, store: JobStore, settings: Settings,
                 on_delivery: Callable[[str, str], None] | None = None, counters: Counters | None = None) -> None:
        self.store = store
        self.settings = settings
        self.on_delivery = on_delivery
        self.counters = counters or Counters()

    # --- create ----------------------------------------------------------------------------------

    def create(self, request: JobRequest, payload: dict[str, Any], job_id: str | None = None,
               now: datetime | None = None) -> tuple[Job, bool]:
        """Store and enqueue a validated request; (job, created). A repeated idempotency key returns the
        first job with created=False. Two round trips (three with an idempotency key, which is decided
        first): everything that may refuse or must exist before the job does (quota slots, index slots,
        payload), then the record with the wake-up. Whatever fails, what is left is nothing visible or a
        whole job the sweeper finishes."""
        job = new_job(request, job_id or new_job_id(), self.settings.default_pool, now or self.store.clock())
        if request.idempotency_key and not self.store.idempotency.claim(
                request.user_id, request.idempotency_key, job.id, request_digest(request)):
            # Decided before anything else is taken, so a burst of repeats leaves no trace in the index.
            original = self.store.idempotency.original(request.user_id, request.idempotency_key,
                                                       request_digest(request))
            return (original, False) if original is not None else self.create(request, payload, job.id, now)
        reserved = self._reserve(request, job, payload)
        job.active_slots, job.index_slots = reserved.quota, reserved.slots
        if reserved.full is not None:
            self._give_back(job, request, reserved)
            who = "this user" if reserved.full[0] != keys.ALL else "the service"
            raise Overloaded(f"{who} already has {reserved.full[1]} active jobs; retry when some finish",
                             retry_after_s=10)
        self._commit(job, request, payload, reserved)
        self._count(None, job)
        return job, True

    def _reserve(self, request: JobRequest, job: Job, payload: dict[str, Any]) -> _Reserved:
        """One round trip: quota slots, payload, and a guessed index slot per scope next to that scope's head
        hint. A guess that missed costs one more round trip."""
        scopes = [keys.ALL] + ([keys.scope(job.user_id)] if job.user_id is not None else [])
        caps = [(s, c) for s, c in self._caps(job.user_id) if c > 0]
        guesses = {s: self.store.index.guess(s) for s in scopes}
        calls: list[Callable[[], Any]] = [lambda: self.store.put_payload(job.id, payload)]
        calls += [lambda s=s: self.store.index.head_hint(s) for s in scopes]
        calls += [lambda s=s: self.store.index.try_slot(s, guesses[s], job.id) for s in scopes]
        calls += [lambda s=s, c=c: self.store.quotas.acquire(s, c, job.id) for s, c in caps]
        results = settle_all(calls)
        got = iter(results[1:])
        hints = {s: next(got) for s in scopes}
        won = {s: next(got) for s in scopes}
        taken = {s: next(got) for s, _ in caps}
        quota = {s: n for s, n in taken.items() if isinstance(n, int)}
        if failed := next((r for r in results if isinstance(r, BaseException)), None):
            self._give_back(job.model_copy(update={"active_slots": quota}), request, _Reserved(quota, {}, None))
            raise failed
        slots = run_all([lambda s=s: self.store.index.settle_guess(s, job.id, guesses[s], won[s], hints[s])
                         for s in scopes])
        full = next(((s, c) for s, c in caps if taken[s] is None), None)
        return _Reserved(quota, dict(zip(scopes, slots, strict=True)), full)

    def _caps(self, user_id: str | None) -> list[tuple[str, int]]:
        caps = [(keys.ALL, self.settings.max_active_jobs)]
        if user_id is not None:
            caps.append((keys.scope(user_id), self.settings.max_active_jobs_per_user))
        return caps

    def _commit(self, job: Job, request: JobRequest, payload: dict[str, Any], reserved: _Reserved) -> None:
        """Round trip two: the record (with the index head hints) and the wake-up. Past this point a failure
        leaves at most a whole job: a record whose wake-up the sweeper re-sends, or a wake-up that writes the
        record when a worker starts it. A failure the store can hear of is undone."""
        heads = {keys.index_head(s): n for s, n in reserved.slots.items()}
        try:
            if self.store.carries_record(job):
                run_all([lambda: self.store.put_record(job, heads), lambda: self.store.enqueue(job, payload)])
            else:  # the wake-up goes as an id alone: the worker must find the record
                self.store.put_record(job, heads)
                self.store.enqueue(job)
        except BaseException:
            self._give_back(job, request, reserved, committed=True)
            raise

    def _give_back(self, job: Job, request: JobRequest, reserved: _Reserved, committed: bool = False) -> None:
        """Undo a submission: quota slots, the idempotency key, the payload; after a commit also the record,
        and its first move is claimed so a wake-up that went out anyway can never start it. Index slots stay,
        pointing at nothing (listing skips them): a slot is never handed out twice."""
        calls: list[Callable[[], Any]] = [lambda: self.store.quotas.release_all(job)]
        if request.idempotency_key:
            calls.append(lambda: self.store.idempotency.forget(request.user_id, request.idempotency_key or "", job.id))
        if committed:
            calls += [lambda: self.store.forget_new(job), lambda: self.store.refuse_start(job)]
        else:
            calls.append(lambda: self.store.forget_new(job))
        try:
            run_all(calls)
        except ComfySaasError as exc:  # the store is away: the leftovers are invisible or a whole job
            logs.event(log, "job.give_back_failed", logging.WARNING, job_id=job.id, error=str(exc))

    # --- the owner's moves -----------------------------------------------------------------------

    def start(self, job: Job, worker_id: str) -> Job | None:
        """queued -> running: win the attempt (one round trip). The record is written in the background, so the
        worker can hand the prompt to ComfyUI at once (its later writes wait for this one). None if decided
        elsewhere."""
        return self._move(job, Status.RUNNING, worker_id, defer_write=True, worker_id=worker_id)

    def heartbeat(self, job: Job, progress: Progress | None = None, events: list[dict[str, Any]] | None = None,
                  outputs: list[Output] | None = None, preview: dict[str, Any] | None = None) -> None:
        """Report the running attempt `job` (as its owner holds it: progress, outputs stored so far, newest
        preview frame), in one round trip; AttemptMoved when it is no longer this attempt's to run. Never writes
        the job record, so it cannot undo a requeue, a cancel or an outcome."""
        self.store.settle(job.id)
        record = self.store.write_progress(job, progress, events or [], outputs, preview)
        if record is None or record.status is not Status.RUNNING or record.claim_seq != job.claim_seq:
            status = record.status.value if record is not None else "gone"
            raise AttemptMoved(f"job {job.id} is {status} (claim {record.claim_seq if record else '-'}), "
                               f"no longer attempt {job.claim_seq}")

    def finish(self, job: Job, status: Status, **changes: Any) -> Job | None:
        """The running attempt's terminal outcome; None when another move was decided first. Two round trips
        (claim, record), three with quota slots to give back or a webhook to register."""
        return self._move(job, status, job.worker_id or "worker", **changes)

    def release(self, job: Job, error: JobError) -> Job | None:
        """The owner lost its ComfyUI: the job goes back to the queue while attempts remain, else fails."""
        target = Status.QUEUED if job.retryable(self.settings.max_attempts) else Status.FAILED
        return self._move(job, target, job.worker_id or "worker", error=error)

    # --- others' moves -----------------------------------------------------------------------------

    def take_over(self, job: Job, target: Status, error: JobError, owner: str) -> Job | None:
        """Decide a job for whoever holds it: flag a live worker to stop, then win the move. None when
        someone else decided first."""
        if job.terminal:
            return None
        if job.status is Status.RUNNING and target is not Status.QUEUED:
            self.store.flag_cancel(job.id)  # so a live worker interrupts ComfyUI
        return self._move(job, target, owner, error=error)

    def cancel(self, job: Job | str, user_id: str | None = None) -> Job:
        """Flag the job (as the caller just read it, or by id) for cancellation; a queued job nobody owns yet
        is cancelled right here. The flag goes out with the move, so a worker that won the start meanwhile
        still sees it: one round trip for a running job, two or three for a queued one."""
        if isinstance(job, str):
            job = self.store.require(job, user_id)
        if job.terminal:
            return job
        if job.status is not Status.QUEUED:
            self.store.flag_cancel(job.id)
            return job
        _, moved = run_all([lambda: self.store.flag_cancel(job.id),
                            lambda: self._move(job, Status.CANCELLED, "api:cancel", error=CANCELLED_QUEUED)])
        return moved if moved is not None else self.store.require(job.id)

    def requeue(self, job: Job, error: JobError, owner: str) -> Job:
        """A queued job's wake-up again, or a running job taken over and queued again."""
        if job.status is Status.QUEUED:
            self.store.enqueue(job)
            return job
        if job.status is not Status.RUNNING:
            raise Conflict(f"job {job.id} is {job.status.value}; only queued or running jobs can be requeued")
        moved = self.take_over(job, Status.QUEUED, error, owner)
        if moved is None:
            raise Conflict("another actor took the job meanwhile; inspect it again")
        return moved

    def fail(self, job: Job, error: JobError, owner: str) -> Job:
        """Fail an unfinished job; a live worker sees the cancel flag and stops."""
        if job.terminal:
            raise Conflict(f"job {job.id} already {job.status.value}")
        moved = self.take_over(job, Status.FAILED, error, owner)
        if moved is None:
            raise Conflict("another actor took the job meanwhile; inspect it again")
        return moved

    def redo_consequences(self, job: Job, owner: str = "repair") -> None:
        """Run a recorded move's consequences again (they are idempotent): for a job whose record landed but
        whose mover died before its side effects."""
        self._consequences(job, owner)

    def repair(self, decided: Job, owner: str = "repair") -> None:
        """Finish a move whose winner decided it but did not live to write it: the record, then the move's
        own consequences (a wake-up for a requeue, the side effects of an outcome). Idempotent."""
        self.store.write_record(decided)
        self._consequences(decided, owner)
        logs.event(log, "job.repaired", job_id=decided.id, worker_id=owner, status=decided.status.value)

    # --- the one path every move takes -------------------------------------------------------------

    def _move(self, job: Job, target: Status, owner: str, defer_write: bool = False, **changes: Any) -> Job | None:
        try:
            moved = self.store.transition(job, target, owner, defer_write=defer_write, **changes)
        except Decided as lost:
            self._maybe_repair(job, lost, owner)
            logs.event(log, "job.move_lost", job_id=job.id, worker_id=owner, status=target.value, error=str(lost))
            return None
        self._count(job.status, moved)
        self._consequences(moved, owner)
        return moved

    def _count(self, source: Status | None, moved: Job) -> None:
        self.counters.moved(source, moved.status, moved.pool)
        if moved.terminal:
            self.counters.finished(moved)
        self.flush_counters()

    def flush_counters(self, wait: bool = False) -> None:
        """Write this process's counts when due (in the background unless `wait`)."""
        if wait:
            self.store.save_counters(self.counters)
        elif self.counters.due():
            submit(lambda: self.store.save_counters(self.counters))

    def _maybe_repair(self, job: Job, lost: Decided, owner: str) -> None:
        """The winner of the move we lost has had ample time to write its record: if the record we acted
        on is still the one before that move, the winner is gone and we finish its move for it."""
        if lost.winner is None or lost.at is None:
            return
        if (self.store.clock() - lost.at).total_seconds() < REPAIR_AFTER_S:
            return  # the winner is most likely writing it right now
        current = self.store.get(job.id)
        if current is not None and current.claim_seq < lost.winner.claim_seq:
            self.repair(lost.winner, owner)

    def _consequences(self, job: Job, owner: str) -> None:
        if job.terminal:
            self._after_terminal(job, owner)
        elif job.status is Status.QUEUED:
            self.store.enqueue(job)
        elif job.status is Status.RUNNING:
            submit(lambda: self.store.note_taken(job))  # in the background: nothing waits for it

    def _after_terminal(self, job: Job, owner: str) -> None:
        """Side effects of a terminal outcome, in one round trip; each is idempotent, so a repair may run
        them again. Pending deliveries are found by the sweeper, which sees every finished job."""
        calls: list[Callable[[], Any]] = [lambda: self.store.quotas.release_all(job)]
        if job.webhook_url:
            calls.append(lambda: self.store.register_webhook(new_delivery(job, self.store.clock())))
        run_all(calls)
        if job.webhook_url and self.on_delivery is not None:
            # Sent off the caller's path: a slow receiver never holds up a worker or a request.
            threading.Thread(target=self.on_delivery, args=(job.id, owner), daemon=True).start()


def request_digest(request: JobRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
