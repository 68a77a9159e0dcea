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
import time
from collections.abc import Callable
from typing import Any

from comfy_saas import logs
from comfy_saas.config import Settings
from comfy_saas.errors import ComfySaasError, Conflict, Overloaded
from comfy_saas.jobs import keys
from comfy_saas.jobs.deliveries import new_delivery
from comfy_saas.jobs.model import Job, JobError, Progress, Status, new_job_id
from comfy_saas.jobs.request import JobRequest, new_job
from comfy_saas.jobs.store import Decided, JobStore

log = logging.getLogger(__name__)

CANCELLED_QUEUED = JobError(type="cancelled", message="cancelled before it started")
# A move's winner writes its record within a round trip or two; one that has not after this long is gone.
REPAIR_AFTER_S = 10.0


class AttemptMoved(ComfySaasError):
    """The attempt a worker holds was decided elsewhere (taken over, cancelled, finished)."""

    type = "attempt_moved"


class Lifecycle:
    """The named moves over one store. `on_delivery(job_id, owner)` starts a webhook's first attempt."""

    def __init__(self, store: JobStore, settings: Settings,
                 on_delivery: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.on_delivery = on_delivery

    # --- create ----------------------------------------------------------------------------------

    def create(self, request: JobRequest, payload: dict[str, Any]) -> tuple[Job, bool]:
        """Store and enqueue a validated request; (job, created). A repeated idempotency key returns the
        first job with created=False. Any failure gives back what was taken."""
        job_id = new_job_id()
        if request.idempotency_key and not self.store.claim_idempotency(
                request.user_id, request.idempotency_key, job_id, request_digest(request)):
            return self._idempotent_original(request), False
        job = new_job(request, job_id, self.settings.default_pool, self.store.clock())
        stored = False
        try:
            job.active_slots = self._acquire_quota(job_id, request.user_id)
            self.store.put_new(job, payload)
            stored = True
            self.store.add_to_index(job)
            self.store.enqueue(job)
        except BaseException:
            self._undo_create(job, request, stored)
            raise
        return job, True

    def _undo_create(self, job: Job, request: JobRequest, stored: bool) -> None:
        # Nothing half-stored: an index slot may remain, pointing at nothing, and listing skips it.
        if stored:
            self.store.forget_new(job)
        self.store.release_active(job)
        if request.idempotency_key:
            self.store.forget_idempotency(request.user_id, request.idempotency_key)

    def _acquire_quota(self, job_id: str, user_id: str | None) -> dict[str, int]:
        caps = [(keys.ALL, self.settings.max_active_jobs)]
        if user_id is not None:
            caps.append((keys.scope(user_id), self.settings.max_active_jobs_per_user))
        taken: dict[str, int] = {}
        for scope, cap in caps:
            if cap <= 0:
                continue
            n = self.store.acquire_active(scope, cap, job_id)
            if n is None:
                self.store.release_active(Job.model_construct(id=job_id, active_slots=taken))
                who = "this user" if scope != keys.ALL else "the service"
                raise Overloaded(f"{who} already has {cap} active jobs; retry when some finish", retry_after_s=10)
            taken[scope] = n
        return taken

    def _idempotent_original(self, request: JobRequest, wait_s: float = 5.0) -> Job:
        entry = self.store.idempotency_entry(request.user_id, request.idempotency_key or "") or {}
        if entry.get("digest") != request_digest(request):
            raise Conflict("idempotency_key was already used with a different request")
        deadline = time.monotonic() + wait_s
        while (job := self.store.get(entry["job_id"])) is None:  # the winner may not have written it yet
            if time.monotonic() > deadline:
                raise Overloaded("the original request with this idempotency_key did not complete; retry")
            time.sleep(0.01)
        return job

    # --- the owner's moves -----------------------------------------------------------------------

    def start(self, job: Job, worker_id: str) -> Job | None:
        """queued -> running: win the attempt. The record is written in the background, so the worker can
        hand the prompt to ComfyUI at once (its later writes wait for this one). None if decided elsewhere."""
        return self._move(job, Status.RUNNING, worker_id, defer_write=True, worker_id=worker_id)

    def heartbeat(self, job: Job, progress: Progress | None = None,
                  events: list[dict[str, Any]] | None = None) -> None:
        """Report the running attempt `job` (as its owner holds it); AttemptMoved when it is no longer this
        attempt's to run. Never writes the job record, so it cannot undo a requeue, a cancel or an outcome."""
        self.store.settle(job.id)
        record = self.store.write_progress(job, progress, events or [])
        if record is None or record.status is not Status.RUNNING or record.claim_seq != job.claim_seq:
            status = record.status.value if record is not None else "gone"
            raise AttemptMoved(f"job {job.id} is {status} (claim {record.claim_seq if record else '-'}), "
                               f"no longer attempt {job.claim_seq}")

    def finish(self, job: Job, status: Status, **changes: Any) -> Job | None:
        """The running attempt's terminal outcome; None when another move was decided first."""
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

    def cancel(self, job_id: str, user_id: str | None = None) -> Job:
        """Flag the job for cancellation; a queued job nobody owns yet is cancelled right here."""
        job = self.store.require(job_id, user_id)
        if job.terminal:
            return job
        self.store.flag_cancel(job_id)
        if job.status is Status.QUEUED:
            moved = self.take_over(job, Status.CANCELLED, CANCELLED_QUEUED, owner="api:cancel")
            if moved is not None:
                return moved
        return self.store.require(job_id)

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
        self._consequences(moved, owner)
        return moved

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

    def _after_terminal(self, job: Job, owner: str) -> None:
        """Side effects of a terminal outcome; each is idempotent, so a repair may run them again."""
        self.store.release_active(job)
        if job.webhook_url:
            self.store.register_webhook(new_delivery(job, self.store.clock()))
            self.store.index_webhook(job.id)
            if self.on_delivery is not None:
                # Sent off the caller's path: a slow receiver never holds up a worker or a request.
                threading.Thread(target=self.on_delivery, args=(job.id, owner), daemon=True).start()


def request_digest(request: JobRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
