"""Running jobs against one ComfyUI: the pool loop, and "run a job" as a sequence of named steps.

    prepare inputs -> submit -> await completion (progress, heartbeats, cancel) -> collect outputs
    -> upload -> finish

A worker owns one ComfyUI and one WebSocket to it. It moves its jobs only through the lifecycle; when a
move was decided elsewhere (a cancel, the sweeper), its own is refused and it lets go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from comfy_saas import logs
from comfy_saas.backends import safe_fetch
from comfy_saas.errors import ComfyUnavailable, MediaError, PromptRejected
from comfy_saas.jobs import keys, webhooks
from comfy_saas.jobs.lifecycle import AttemptMoved
from comfy_saas.jobs.model import Job, JobError, Output, Progress, Status, Timings, utcnow
from comfy_saas.jobs.request import MediaInput
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import PROGRESS_EVENTS_KEPT
from comfy_saas.runner.comfy_client import ComfyClient, Event, EventStream
from comfy_saas.runner.outputs import OutputItem, collect
from comfy_saas.runner.progress import ProgressTracker
from comfy_saas.workflows import preflight
from comfy_saas.workflows.edits import apply_overrides, rewrite_media

log = logging.getLogger(__name__)

_PROGRESS_WRITE_S = 0.5  # at most two progress writes a second per job
_HISTORY_POLL_S = 2.0  # when the socket is quiet, ask /history this often
_INTERRUPT_GRACE_S = 15.0  # how long to wait for ComfyUI to confirm an interrupt


@dataclass
class Outcome:
    """How a prompt ended, as seen by the worker."""

    status: Status
    history: dict[str, Any] | None = None
    error: JobError | None = None
    nodes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One attempt of one job on this worker, with the wall-clock marks of its phases."""

    job: Job
    prompt_id: str
    deadline: float
    start_kind: str
    workflow: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    _mark: float = 0.0

    def lap(self, phase: str) -> None:
        """Close `phase` now: it took the time since the previous mark (or since the job started)."""
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + (now - (self._mark or self.job.started_at.timestamp()))
        self._mark = now

    warmup_ms: float | None = None

    def timings(self, finished: datetime) -> Timings:
        created, started = self.job.created_at.timestamp(), self.job.started_at.timestamp()
        rest = finished.timestamp() - (self._mark or started)
        ms = lambda s: round(s * 1000, 1)  # noqa: E731
        return Timings(start_kind=self.start_kind, queue_wait_ms=ms(started - created),
                       prepare_ms=ms(self.phases.get("prepare", 0.0)), execute_ms=ms(self.phases.get("execute", 0.0)),
                       upload_ms=ms(self.phases.get("upload", 0.0)), finish_ms=ms(rest),
                       total_ms=ms(finished.timestamp() - created), nodes=self.nodes, warmup_ms=self.warmup_ms)


class DrainLease(Protocol):
    """What a drain tells its slot (jobs/wakeups.py): busy while it runs a job, idle while it waits."""

    def busy(self) -> None: ...
    def idle(self) -> None: ...


def _time_left(deadline: float | None) -> float:
    return float("inf") if deadline is None else deadline - time.monotonic()


def new_worker_id() -> str:
    """Made at container start (never in a memory snapshot), so restored workers differ."""
    return f"w-{uuid.uuid4().hex[:12]}"


class Worker:
    """Pulls job ids from one pool's queue and runs them on one ComfyUI."""

    def __init__(self, services: Services, comfy: ComfyClient, worker_id: str | None = None,
                 pool: str | None = None, on_unhealthy: Callable[[], bool] | None = None,
                 scratch_dir: str | Path | None = None, start_kind: str = "launched",
                 warmup_workflow: str | None = None) -> None:
        self.services = services
        self.store = services.store
        self.lifecycle = services.lifecycle
        self.objects = services.objects
        self.comfy = comfy
        self.settings = settings = services.settings
        self.worker_id = worker_id or new_worker_id()
        self.pool = pool or settings.default_pool
        self.on_unhealthy = on_unhealthy or (lambda: False)
        self.scratch = Path(scratch_dir or tempfile.gettempdir())
        self.events: EventStream = comfy.events(client_id=self.worker_id)
        self.allowlist = safe_fetch.parse_allowlist(settings.private_url_allowlist)
        self.current_job: str | None = None
        self.warmup_workflow = settings.warmup_workflow if warmup_workflow is None else warmup_workflow
        self.start_kind = start_kind  # how the next job finds this worker: restored, launched, then warm
        self._captured = False
        self.warmup_ms: float | None = None
        self._warmup_reported = False

    # --- the pool loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Take jobs until `stop` is set or ComfyUI is unhealthy beyond repair."""
        self.prepare()
        try:
            while not stop.is_set():
                job_id = self.store.next_job_id(self.pool, timeout_s=poll_s)
                if job_id is not None and not self.process(job_id):
                    log.error("worker %s: ComfyUI unhealthy, leaving the pool", self.worker_id)
                    return
        finally:
            self.events.close()

    def prepare(self) -> None:
        """Before the first job: publish the node catalogue and run the warmup workflow if configured."""
        self.capture_object_info()
        if self.warmup_workflow and self.warmup_ms is None:
            try:
                self.warm_up(json.loads(Path(self.warmup_workflow).read_text()))
            except (ComfyUnavailable, PromptRejected, OSError, ValueError) as exc:
                # A broken warmup costs the first job its warm start, never the worker.
                logs.event(log, "worker.warmup_failed", logging.WARNING, worker_id=self.worker_id, error=str(exc))

    def warm_up(self, workflow: dict[str, Any]) -> float:
        """Run a workflow straight on ComfyUI (not a job) so the first real job finds it warm; its ms."""
        started = time.monotonic()
        prompt_id = f"warmup-{self.worker_id}"
        self.events.ensure_open()
        self.comfy.queue_prompt(workflow, self.events.client_id, prompt_id)
        deadline = time.monotonic() + self.settings.job_timeout_s
        while self.comfy.history(prompt_id) is None:
            if time.monotonic() > deadline:
                raise ComfyUnavailable("the warmup workflow did not finish")
            self.events.next(timeout_s=0.1)  # keep the socket drained while waiting
        self.warmup_ms = round((time.monotonic() - started) * 1000, 1)
        self.start_kind = "warm"
        logs.event(log, "worker.warmed_up", worker_id=self.worker_id, phase="warmup")
        return self.warmup_ms

    def capture_object_info(self) -> None:
        """Publish this ComfyUI's node catalogue for pre-flight validation at submit (once per worker)."""
        if self._captured:
            return
        try:
            self.store.save_object_info(preflight.compact(self.comfy.object_info()), self.pool)
            self._captured = True
        except ComfyUnavailable as exc:
            logs.event(log, "object_info.capture_failed", logging.WARNING, worker_id=self.worker_id, error=str(exc))

    def drain(self, idle_s: float, first_wait_s: float = 0.5, deadline: float | None = None,
              lease: DrainLease | None = None, keep_pulling: bool = False, max_job_s: float | None = None) -> int:
        """Take jobs until the queue stays empty for idle_s (one Modal input); how many wake-ups it handled.
        A drain that finds nothing at first returns at once. With a deadline (time.monotonic) it takes no job
        whose timeout would run past it: it hands that wake-up back and stops (a job longer than max_job_s,
        which no drain could finish, fails instead). A floor drain (keep_pulling) does not stop when idle, only
        at its deadline. `lease` hears when the drain turns busy and idle."""
        handled = 0
        self.prepare()
        wait_s = idle_s if keep_pulling else first_wait_s
        try:
            while (left := _time_left(deadline)) > 0:
                job_id = self.store.next_job_id(self.pool, timeout_s=min(wait_s, left))
                if job_id is None:
                    if keep_pulling:
                        continue
                    break
                handled, wait_s = handled + 1, idle_s
                if lease is not None:
                    lease.busy()
                try:
                    carry_on = self.process(job_id, deadline, max_job_s)
                finally:
                    if lease is not None:
                        lease.idle()
                if not carry_on:
                    break
        finally:
            self.events.close()
        return handled

    def has_time_for(self, job: Job, deadline: float | None) -> bool:
        """Whether the job's whole timeout fits before the drain's deadline (always, without one)."""
        limit = job.timeout_s or self.settings.job_timeout_s
        return deadline is None or time.monotonic() + limit <= deadline

    def process(self, job_id: str, deadline: float | None = None, max_job_s: float | None = None) -> bool:
        """Handle one wake-up; False when this worker should stop taking jobs."""
        job = self.store.get(job_id)
        if job is None or job.status is not Status.QUEUED:
            return True  # a stale or duplicate wake-up
        if self.store.cancel_requested(job_id):
            self.lifecycle.cancel(job_id)
            return True
        if max_job_s is not None and (job.timeout_s or self.settings.job_timeout_s) > max_job_s:
            error = JobError(type="timeout_too_long", message=f"the job's timeout is above the {max_job_s:.0f} s "
                                                              f"its pool's workers can run")
            self.lifecycle.take_over(job, Status.FAILED, error, self.worker_id)  # None: decided elsewhere
            return True
        if not self.has_time_for(job, deadline):
            # Modal would kill the job at the input's timeout: a fresh drain (a new input) takes it instead.
            self.store.enqueue(job)
            logs.event(log, "worker.deadline_near", job_id=job_id, worker_id=self.worker_id, pool=job.pool)
            return False
        if not self.comfy.healthy():
            self.store.enqueue(job)  # hand the wake-up back before anything is claimed
            return self.on_unhealthy()
        started = self.lifecycle.start(job, self.worker_id)
        if started is not None:  # else another worker or a cancel won the attempt
            self.run_job(started)
        return True

    # --- running one job ---------------------------------------------------------------------

    def run_job(self, job: Job) -> None:
        """Run one started attempt to an outcome; never raises for the job's own failures."""
        job_id = job.id
        logs.event(log, "job.started", job_id=job_id, attempt=job.attempts, worker_id=self.worker_id,
                   phase="prepare", pool=job.pool)
        limit = job.timeout_s or self.settings.job_timeout_s
        run = Run(job, prompt_id=f"{job_id}-{job.claim_seq}", deadline=time.monotonic() + limit,
                  start_kind=self.start_kind)
        if not self._warmup_reported:
            run.warmup_ms, self._warmup_reported = self.warmup_ms, True
        self.start_kind = "warm"
        self.current_job = job_id
        try:
            self._run_steps(run)
        except ComfyUnavailable as exc:
            self.comfy.forget_health()
            logs.event(log, "job.comfyui_lost", logging.WARNING, job_id=job_id, attempt=job.attempts,
                       worker_id=self.worker_id, error=str(exc))
            self.release(run, str(exc))
        except AttemptMoved as exc:
            logs.event(log, "job.taken_over", job_id=job_id, attempt=job.attempts, worker_id=self.worker_id,
                       error=str(exc))
            self._stop_prompt_quietly(run)
        except Exception as exc:  # a bug must fail one job, never the worker
            log.exception("internal error", extra={"event": "job.internal_error", "job_id": job_id,
                                                   "worker_id": self.worker_id})
            self.finish(run, Outcome(Status.FAILED, error=JobError(type="internal_error", message=str(exc))))
        finally:
            self.current_job = None

    def _run_steps(self, run: Run) -> None:
        try:
            run.workflow = self.prepare_inputs(run)
            run.lap("prepare")
            self.submit(run)
        except MediaError as exc:
            return self.finish(run, Outcome(Status.FAILED, error=JobError(type="media_error", message=exc.message)))
        except PromptRejected as exc:
            return self.finish(run, Outcome(Status.FAILED, error=rejection_error(exc)))
        outcome = self.await_completion(run)
        run.nodes = outcome.nodes
        run.lap("execute")
        if outcome.status is Status.COMPLETED:
            items = collect(outcome.history.get("outputs", {}), include_temp=run.job.include_previews)
            uploaded = self.upload_outputs(run, items)
            run.lap("upload")
            return self.finish(run, outcome, outputs=uploaded)
        return self.finish(run, outcome)

    def prepare_inputs(self, run: Run) -> dict[str, Any]:
        """Fetch media, upload them to ComfyUI under collision-free names, apply overrides."""
        payload = self.store.payload(run.job.id)
        names = {}
        for i, raw in enumerate(payload.get("media", [])):
            media = MediaInput.model_validate(raw)
            data = self._media_bytes(i, media)
            names[media.name] = self.comfy.upload_image(f"{run.job.id}-{media.name}", data)
        return rewrite_media(apply_overrides(payload["workflow"], payload.get("overrides", [])), names)

    def _media_bytes(self, index: int, media: MediaInput) -> bytes:
        if media.base64 is not None:
            return media.decoded()
        try:
            return safe_fetch.fetch(media.url or "", self.settings.limits.max_media_bytes,
                                    self.settings.media_fetch_timeout_s, self.allowlist)
        except MediaError as exc:
            raise MediaError(f"media[{index}] ({media.name}): {exc.message}") from None

    def submit(self, run: Run) -> None:
        """Open the socket first so no event is missed, then queue the prompt."""
        self.events.ensure_open()
        answer = self.comfy.queue_prompt(run.workflow, self.events.client_id, run.prompt_id)
        if answer.get("node_errors"):
            # ComfyUI runs the outputs that validated and drops the rest; a job wants all of them.
            self._stop_prompt_quietly(run)
            raise PromptRejected("some outputs failed validation", {
                "error": {"message": "Prompt outputs failed validation"}, "node_errors": answer["node_errors"]})

    def await_completion(self, run: Run) -> Outcome:
        """Follow the prompt to its end, writing progress and heartbeats and honouring cancel."""
        watch = _Watch(self, run)
        while True:
            outcome = watch.tick()
            if outcome is not None:
                outcome.nodes = watch.tracker.node_timings()
                return outcome

    def upload_outputs(self, run: Run, items: list[OutputItem]) -> list[Output]:
        """Copy every output from ComfyUI to object storage under {job}/{node}/{stable name}."""
        uploaded = []
        for item in items:
            key = keys.output(run.job.id, run.job.created_at, item.node_id, item.name)
            if item.text is not None:
                size = self.objects.put_bytes(key, item.text.encode(), item.content_type)
            else:
                size = self._copy_file(item, key)
            uploaded.append(Output(node_id=item.node_id, kind=item.kind, filename=item.name, key=key,
                                   content_type=item.content_type, size_bytes=size))
        return uploaded

    def _copy_file(self, item: OutputItem, key: str) -> int:
        with tempfile.NamedTemporaryFile(dir=self.scratch, prefix="out-", delete=True) as tmp:
            self.comfy.download(item.ref or {}, Path(tmp.name))
            return self.objects.put_file(key, tmp.name, item.content_type)

    def finish(self, run: Run, outcome: Outcome, outputs: list[Output] | None = None) -> None:
        """The terminal transition; losing it to another decider is fine."""
        finished = utcnow()
        changes: dict[str, Any] = {"error": outcome.error, "finished_at": finished, "timings": run.timings(finished)}
        if outputs is not None:
            changes["outputs"] = outputs
        if outcome.status is Status.COMPLETED:
            changes["progress"] = Progress(percent=100.0, nodes_done=len(run.workflow), nodes_total=len(run.workflow))
        job = self.lifecycle.finish(run.job, outcome.status, **changes)
        if job is None:
            logs.event(log, "job.outcome_not_recorded", job_id=run.job.id, attempt=run.job.attempts,
                       worker_id=self.worker_id, status=outcome.status.value)
            return
        logs.event(log, "job.finished", job_id=job.id, attempt=job.attempts, worker_id=self.worker_id,
                   phase="finish", status=job.status.value, error=outcome.error.type if outcome.error else None)

    def release(self, run: Run, reason: str) -> None:
        """ComfyUI went away mid-job: requeue the job while attempts remain, else fail it."""
        self.lifecycle.release(run.job, JobError(type="comfyui_unavailable", message=reason))

    # --- stopping a prompt -------------------------------------------------------------------

    def stop_prompt(self, run: Run) -> str:
        """Interrupt our prompt if it runs, or delete it if still queued; never touch another prompt."""
        q = self.comfy.queue()
        if any(item[1] == run.prompt_id for item in q.get("queue_running", [])):
            self.comfy.interrupt(run.prompt_id)
            return "interrupting"
        if any(item[1] == run.prompt_id for item in q.get("queue_pending", [])):
            self.comfy.delete_queued(run.prompt_id)
            return "deleted"
        return "gone"

    def _stop_prompt_quietly(self, run: Run) -> None:
        with contextlib.suppress(ComfyUnavailable):
            self.stop_prompt(run)


class _Watch:
    """The await-completion loop's state: one `tick()` handles at most one event."""

    def __init__(self, worker: Worker, run: Run) -> None:
        self.w = worker
        self.run = run
        self.tracker = ProgressTracker(run.workflow)
        now = time.monotonic()
        self.next_cancel_check = now
        self.next_heartbeat = now + worker.settings.heartbeat_interval_s
        # The first progress write waits a moment: a job that finishes within it needs none.
        self.next_progress_write = now + _PROGRESS_WRITE_S
        self.next_history_poll = now + _HISTORY_POLL_S
        self.stopping: Outcome | None = None  # set once we asked ComfyUI to stop our prompt
        self.stop_sent_at = 0.0
        self.dirty = False
        self.progress: Progress | None = None
        self.events: list[dict[str, Any]] = []  # what an SSE watcher replays; kept with the heartbeat

    def tick(self) -> Outcome | None:
        now = time.monotonic()
        if self.stopping is None and now >= self.next_cancel_check:
            self.next_cancel_check = now + self.w.settings.cancel_poll_s
            if (decided := self._check_cancel_and_deadline(now)) is not None:
                return decided
        if self.stopping is not None and now - self.stop_sent_at > _INTERRUPT_GRACE_S:
            return self.stopping  # ComfyUI never confirmed; the job's fate is ours to write
        event = self.w.events.next(timeout_s=0.2)
        outcome = self._on_event(event) if event is not None else None
        if outcome is None and (event is None or event.type in {"reconnected", "disconnected"}):
            outcome = self._poll_history(now, force=event is not None and event.type == "reconnected")
        self._write_progress(now)
        return outcome

    def _check_cancel_and_deadline(self, now: float) -> Outcome | None:
        if self.w.store.cancel_requested(self.run.job.id):
            wanted = Outcome(Status.CANCELLED, error=JobError(type="cancelled", message="cancelled by request"))
        elif now > self.run.deadline:
            wanted = Outcome(Status.FAILED, error=JobError(type="timeout", message="job exceeded its run time"))
        else:
            return None
        if self.w.stop_prompt(self.run) == "deleted":
            return wanted  # it never started, so no interrupt event will come
        self.stopping, self.stop_sent_at = wanted, now
        return None

    def _mine(self, event: Event) -> bool:
        if event.prompt_id is not None:
            return event.prompt_id == self.run.prompt_id
        # On reconnect ComfyUI re-sends `executing` without a prompt id for the client's running prompt.
        return event.type in {"executing", "progress_text"}

    def _on_event(self, event: Event) -> Outcome | None:
        if not self._mine(event):
            return None
        self.dirty |= self.tracker.apply(event)
        if event.type == "execution_success":
            return Outcome(Status.COMPLETED, history=self._history_until_present())
        if event.type == "execution_error":
            return Outcome(Status.FAILED, error=execution_error(event.data))
        if event.type == "execution_interrupted":
            return self.stopping or Outcome(Status.FAILED, error=JobError(
                type="interrupted", message="ComfyUI interrupted the prompt", node_id=event.data.get("node_id"),
                node_class=event.data.get("node_type")))
        return None

    def _history_until_present(self) -> dict[str, Any]:
        # execution_success can arrive a moment before /history has the entry.
        for _ in range(100):
            entry = self.w.comfy.history(self.run.prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.02)
        raise ComfyUnavailable("ComfyUI reported success but has no history for the prompt")

    def _poll_history(self, now: float, force: bool) -> Outcome | None:
        """The fallback source of truth while the socket is quiet or was dropped."""
        if not force and now < self.next_history_poll:
            return None
        self.next_history_poll = now + _HISTORY_POLL_S
        entry = self.w.comfy.history(self.run.prompt_id)
        if entry is None:
            return None
        return outcome_from_history(entry, self.stopping)

    def _write_progress(self, now: float) -> None:
        due_progress = self.dirty and now >= self.next_progress_write
        if not due_progress and now < self.next_heartbeat:
            return
        if due_progress:
            self.progress = self.tracker.snapshot()
            seq = self.events[-1]["seq"] + 1 if self.events else 1
            shown = self.progress.model_dump(mode="json")
            self.events = [*self.events[-(PROGRESS_EVENTS_KEPT - 1):], {"seq": seq, "at": utcnow().isoformat(),
                                                                        "progress": shown}]
        self.w.lifecycle.heartbeat(self.run.job, self.progress, self.events)
        job = self.run.job
        if due_progress and job.webhook_url and job.webhook_progress:
            shown = job.model_copy(update={"progress": self.progress})
            threading.Thread(target=webhooks.send_progress, args=(self.w.services, shown), daemon=True).start()
        self.dirty = self.dirty and not due_progress
        self.next_progress_write = now + _PROGRESS_WRITE_S
        self.next_heartbeat = now + self.w.settings.heartbeat_interval_s


def outcome_from_history(entry: dict[str, Any], stopping: Outcome | None = None) -> Outcome:
    """What a history entry says about how the prompt ended."""
    status = entry.get("status") or {}
    if status.get("completed") and status.get("status_str") == "success":
        return Outcome(Status.COMPLETED, history=entry)
    for event, data in reversed(status.get("messages") or []):
        if event == "execution_error":
            return Outcome(Status.FAILED, error=execution_error(data))
        if event == "execution_interrupted":
            return stopping or Outcome(Status.FAILED, error=JobError(type="interrupted",
                                                                      message="ComfyUI interrupted the prompt"))
    return Outcome(Status.FAILED, error=JobError(type="comfyui_error", message="prompt ended without success"))


def execution_error(data: dict[str, Any]) -> JobError:
    """ComfyUI's execution_error as the job's error: node id, class and message."""
    message = str(data.get("exception_message", "")).strip() or "node failed"
    return JobError(type="execution_error", message=f"{data.get('exception_type', 'Error')}: {message}",
                    node_id=data.get("node_id"), node_class=data.get("node_type"),
                    details=[{"traceback": data.get("traceback", [])[-3:]}])


def rejection_error(exc: PromptRejected) -> JobError:
    """A 400 from /prompt as the job's error, naming every failing node, its class and the reason."""
    body = exc.body
    details = []
    for node_id, entry in (body.get("node_errors") or {}).items():
        for err in entry.get("errors", []):
            details.append({"node_id": node_id, "class_type": entry.get("class_type"), "type": err.get("type"),
                            "message": err.get("message"), "details": err.get("details")})
    top = body.get("error") or {}
    first = details[0] if details else {}
    reasons = "; ".join(f"node {d['node_id']} ({d['class_type']}): {d['message']}: {d['details']}" for d in details)
    message = f"{top.get('message', 'prompt rejected')}" + (f" - {reasons}" if reasons else
                                                             f" - {top.get('details', '')}".rstrip(" -"))
    return JobError(type="validation_error", message=message, node_id=first.get("node_id"),
                    node_class=first.get("class_type"), details=details)
