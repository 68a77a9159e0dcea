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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from comfy_saas import logs
from comfy_saas.backends import safe_fetch
from comfy_saas.backends.parallel import batches_run_concurrently, run_all
from comfy_saas.errors import (
    BackendError,
    ComfyUnavailable,
    MediaError,
    ModelError,
    NotFound,
    OutputUnavailable,
    PromptRejected,
)
from comfy_saas.jobs import catalogues, keys, output_ids, payloads, webhooks
from comfy_saas.jobs.lifecycle import CANCELLED_QUEUED, AttemptMoved
from comfy_saas.jobs.model import Job, JobError, Output, Progress, Status, Timings, utcnow
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import PROGRESS_EVENTS_KEPT, Wakeup
from comfy_saas.runner.comfy_client import ComfyClient, Event, EventStream
from comfy_saas.runner.convert_outputs import convert_file, may_convert
from comfy_saas.runner.model_links import ModelLinks
from comfy_saas.runner.models import JobModels, Stopped
from comfy_saas.runner.monitor import PROGRESS_WRITE_S, AttemptMonitor
from comfy_saas.runner.output_uploads import OutputUploads
from comfy_saas.runner.outputs import OutputItem, collect
from comfy_saas.runner.progress import ProgressTracker
from comfy_saas.workflows import files, preflight
from comfy_saas.workflows.edits import apply_overrides, rewrite_media

log = logging.getLogger(__name__)

_HISTORY_POLL_S = 2.0  # when the socket is quiet, ask /history this often
_INTERRUPT_GRACE_S = 15.0  # how long to wait for ComfyUI to confirm an interrupt
# A ComfyUI that said something this recently, on a socket still open, is taken to be up when a job arrives (an
# idle worker pings it to keep it so): the ping before each job was a round trip on its path.
COMFY_FRESH_S = 2.0
# An output this small on this machine is copied by the thread that reads ComfyUI's socket (a few ms at most
# even to R2); larger ones go to the upload thread, so cancels and progress are not held up behind them.
QUICK_COPY_BYTES = 2 * 1024 * 1024
# Output folders made ready while the prompt runs, at most this many per job (one per node that saves files).
EXPECTED_FOLDERS_MAX = 32


@dataclass
class Outcome:
    """How a prompt ended, as seen by the worker."""

    status: Status
    outputs: dict[str, Any] = field(default_factory=dict)  # ComfyUI's UI outputs by node, as in a history entry
    error: JobError | None = None
    nodes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One attempt of one job on this worker, with the wall-clock marks of its phases."""

    job: Job
    prompt_id: str
    deadline: float
    start_kind: str
    payload: dict[str, Any] = field(default_factory=dict)  # from the wake-up, or read once when it had none
    monitor: Any = None  # the AttemptMonitor watching this attempt
    workflow: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # every file ComfyUI reported, to delete after
    phases: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, Any] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)  # workflow names -> names ComfyUI knows them by
    events: list[dict[str, Any]] = field(default_factory=list)  # progress events so far (SSE replays them)
    leases: dict[str, Any] = field(default_factory=dict)  # model files this attempt uses, by sha256
    uploads: OutputUploads | None = None  # outputs stored as ComfyUI announces them
    submitted: bool = False  # the prompt went to ComfyUI while the attempt was being claimed
    submitted_at: float | None = None  # when (time.time()), so its run counts as executing from there
    early_error: Exception | None = None  # what that early preparation raised, for the started attempt to handle
    download_bytes: int | None = None
    taken_at: float | None = None  # when this worker took the job's wake-up (time.time()); phases count from there
    _mark: float = 0.0

    def _origin(self) -> float:
        return self.taken_at or self.job.started_at.timestamp()

    def lap(self, phase: str, at: float | None = None) -> None:
        """Close `phase` now (or at `at`, a time.time() after the previous mark): it took the time since the
        previous mark (or since the worker took the job)."""
        now = time.time() if at is None else max(at, self._mark or self._origin())
        self.phases[phase] = self.phases.get(phase, 0.0) + (now - (self._mark or self._origin()))
        self._mark = now

    warmup_ms: float | None = None

    def timings(self, finished: datetime) -> Timings:
        created, started = self.job.created_at.timestamp(), self._origin()
        rest = finished.timestamp() - (self._mark or started)
        ms = lambda s: round(s * 1000, 1)  # noqa: E731
        return Timings(start_kind=self.start_kind, queue_wait_ms=ms(started - created),
                       prepare_ms=ms(self.phases.get("prepare", 0.0)), execute_ms=ms(self.phases.get("execute", 0.0)),
                       upload_ms=ms(self.phases.get("upload", 0.0)), finish_ms=ms(rest),
                       total_ms=ms(finished.timestamp() - created), nodes=self.nodes, warmup_ms=self.warmup_ms,
                       download_ms=ms(self.phases["download"]) if "download" in self.phases else None,
                       download_bytes=self.download_bytes)


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
                 warmup_workflow: str | None = None, models_dir: str | Path | None = None,
                 model_shadows: list[str | Path] | None = None) -> None:
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
        # Job models are linked under models_dir, a folder tree this worker's ComfyUI reads (None: it has none).
        links = ModelLinks(models_dir, model_shadows or []) if models_dir else None
        self.job_models = JobModels(services, links, self.worker_id)
        # One thread each, kept warm between jobs: the uploads (with their own connection to ComfyUI), and the
        # store calls that start a job while this thread hands its prompt to ComfyUI.
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix=f"uploads-{self.worker_id}")
        self._starter = ThreadPoolExecutor(1, thread_name_prefix=f"starts-{self.worker_id}")

    # --- the pool loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Take jobs until `stop` is set or ComfyUI is unhealthy beyond repair."""
        self.prepare()
        try:
            while not stop.is_set():
                wakeup = self.store.next_wakeup(self.pool, timeout_s=poll_s)
                if wakeup is None:
                    self.keep_fresh()
                elif not self.process(wakeup):
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
        self.comfy.queue_prompt(files.isolate(workflow, prompt_id), self.events.client_id, prompt_id)
        deadline = time.monotonic() + self.settings.job_timeout_s
        while (entry := self.comfy.history(prompt_id)) is None:
            if time.monotonic() > deadline:
                raise ComfyUnavailable("the warmup workflow did not finish")
            self.events.next(timeout_s=0.1)  # keep the socket drained while waiting
        self.remove_files(prompt_id, reported_files(entry.get("outputs") or {}))  # its saves are nobody's outputs
        self.warmup_ms = round((time.monotonic() - started) * 1000, 1)
        self.start_kind = "warm"
        logs.event(log, "worker.warmed_up", worker_id=self.worker_id, phase="warmup")
        return self.warmup_ms

    def capture_object_info(self) -> None:
        """Publish this ComfyUI's node catalogue for pre-flight validation at submit (once per worker)."""
        if self._captured:
            return
        try:
            catalogues.publish(self.services, preflight.compact(self.comfy.object_info()), self.pool)
            self._captured = True
        except (ComfyUnavailable, BackendError, OSError) as exc:  # pre-flight waits for the next worker; jobs run
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
                wakeup = self.store.next_wakeup(self.pool, timeout_s=min(wait_s, left))
                if wakeup is None:
                    if keep_pulling:
                        self.keep_fresh()
                        continue
                    break
                handled, wait_s = handled + 1, idle_s
                if lease is not None:
                    lease.busy()
                try:
                    carry_on = self.process(wakeup, deadline, max_job_s)
                finally:
                    if lease is not None:
                        lease.idle()
                if not carry_on:
                    break
        finally:
            self.events.close()
            self.store.settle()
            self.lifecycle.flush_counters(wait=True)
        return handled

    def comfy_up(self) -> bool:
        """Whether this worker's ComfyUI is up: without a round trip when its socket is still open (what waits
        on it is dropped) and it was heard from within COMFY_FRESH_S; else a ping on it, else /system_stats
        (asked afresh when the socket is closed: a ComfyUI that just died was heard from a moment ago)."""
        socket_open = self.events.drop_waiting()
        if socket_open and self.comfy.answered_within(COMFY_FRESH_S):
            return True
        if not socket_open:
            self.comfy.forget_health()
        return self.events.alive() or self.comfy.healthy()

    def keep_fresh(self) -> None:
        """While idle: ping ComfyUI once it has been quiet for half of COMFY_FRESH_S, so the next job's health
        check costs nothing (a ping that goes unanswered closes the socket, and that check asks again)."""
        if not self.comfy.answered_within(COMFY_FRESH_S / 2):
            self.events.alive()

    def has_time_for(self, job: Job, deadline: float | None) -> bool:
        """Whether the job's whole timeout fits before the drain's deadline (always, without one)."""
        limit = job.timeout_s or self.settings.job_timeout_s
        return deadline is None or time.monotonic() + limit <= deadline

    def process(self, wakeup: Wakeup | str, deadline: float | None = None, max_job_s: float | None = None) -> bool:
        """Handle one wake-up; False when this worker should stop taking jobs. The wake-up carries the job
        as it was queued, so starting it is one round trip: the attempt's claim, the cancel flag and the
        payload together. A job whose timeout does not fit before the drain's deadline is handed back."""
        taken_at = time.time()
        if isinstance(wakeup, str):
            wakeup = Wakeup(wakeup, None, 0.0)
        job = wakeup.job or self.store.get(wakeup.job_id)  # a wake-up from before they carried the job
        if job is None or job.status is not Status.QUEUED:
            return True  # a stale or duplicate wake-up
        if max_job_s is not None and (job.timeout_s or self.settings.job_timeout_s) > max_job_s:
            error = JobError(type="timeout_too_long", message=f"the job's timeout is above the {max_job_s:.0f} s "
                                                              f"its pool's workers can run")
            self.lifecycle.take_over(job, Status.FAILED, error, self.worker_id)  # None: decided elsewhere
            return True
        if not self.has_time_for(job, deadline):
            # Modal would kill the job at the input's timeout: a fresh drain (a new input) takes it instead.
            self.store.enqueue(job, wakeup.payload)
            logs.event(log, "worker.deadline_near", job_id=job.id, worker_id=self.worker_id, pool=job.pool)
            return False
        if not self.comfy_up():
            self.store.enqueue(job, wakeup.payload)  # hand the wake-up back before anything is claimed
            return self.on_unhealthy()
        # A job with everything in its wake-up goes to ComfyUI first and its attempt is claimed meanwhile (a round
        # trip on Modal) or right after (locally, where the claim is quicker than handing it to another thread);
        # if the claim is lost, the prompt is stopped before anything of it is kept.
        claim = partial(run_all, [
            lambda: self.lifecycle.start(job, self.worker_id), lambda: self.store.cancel_requested(job.id),
            lambda: wakeup.payload or self._payload(job.id),
            lambda: self.store.save_state(f"taken:{job.pool}", wakeup.sent_at)])
        starting = self._starter.submit(claim) if batches_run_concurrently() else None
        run = self.submit_early(job, wakeup.payload, taken_at) if _early_ok(wakeup.payload) else None
        try:
            started, cancelled, payload, _ = starting.result() if starting is not None else claim()
        except BaseException:
            self._drop_early(run)  # the store is away: the job's fate is the sweeper's, its prompt goes
            raise
        if started is None or cancelled or payload is None:
            self._drop_early(run)
        if started is None:
            return True  # another worker, a cancel, or an undone submission won the attempt
        if cancelled or payload is None:
            error = CANCELLED_QUEUED if cancelled else JobError(type="internal_error", message="no payload stored")
            self.lifecycle.finish(started, Status.CANCELLED if cancelled else Status.FAILED, error=error)
            return True
        self.run_job(started, payload, run, taken_at)
        return True

    def submit_early(self, job: Job, payload: dict[str, Any], taken_at: float | None = None) -> Run:
        """Prepare and submit a queued job's prompt as its next attempt's; what goes wrong is kept in the Run for
        the started attempt to handle (or forgotten with the prompt when the attempt is not ours)."""
        limit = job.timeout_s or self.settings.job_timeout_s
        run = Run(job, prompt_id=f"{job.id}-{job.claim_seq + 1}", deadline=time.monotonic() + limit,
                  start_kind=self.start_kind, payload=payload, submitted=True, taken_at=taken_at)
        try:
            run.workflow = self.prepare_inputs(run)
            self.submit(run)
            run.submitted_at = time.time()
        except Exception as exc:  # handled as the job's own once the attempt is ours
            run.early_error = exc
        return run

    def _drop_early(self, run: Run | None) -> None:
        """The attempt is not ours (or will not run): stop its early prompt and delete what it put in ComfyUI."""
        if run is None:
            return
        self._stop_prompt_quietly(run)
        self.remove_files(run.prompt_id, [], run.job.id)

    def _payload(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.store.payload(job_id)
        except NotFound:
            return None

    # --- running one job ---------------------------------------------------------------------

    def run_job(self, job: Job, payload: dict[str, Any], early: Run | None = None,
                taken_at: float | None = None) -> None:
        """Run one started attempt to an outcome (`early`: its prompt already submitted); never raises for the
        job's own failures."""
        job_id = job.id
        logs.event(log, "job.started", job_id=job_id, attempt=job.attempts, worker_id=self.worker_id,
                   phase="prepare", pool=job.pool)
        limit = job.timeout_s or self.settings.job_timeout_s
        run = early or Run(job, prompt_id=f"{job_id}-{job.claim_seq}", deadline=time.monotonic() + limit,
                           start_kind=self.start_kind, payload=payload, taken_at=taken_at)
        run.job = job
        run.monitor = AttemptMonitor(self.lifecycle, job, self.settings.cancel_poll_s,
                                     self.settings.heartbeat_interval_s)
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
        except BackendError as exc:  # the store or object storage is away: another attempt may have better luck
            logs.event(log, "job.storage_lost", logging.WARNING, job_id=job_id, attempt=job.attempts,
                       worker_id=self.worker_id, error=str(exc))
            self._stop_prompt_quietly(run)
            self._release_quietly(run, JobError(type="storage_unavailable", message=exc.message))
        except Exception as exc:  # a bug must fail one job, never the worker
            log.exception("internal error", extra={"event": "job.internal_error", "job_id": job_id,
                                                   "worker_id": self.worker_id})
            self.finish(run, Outcome(Status.FAILED, error=JobError(type="internal_error", message=str(exc))))
        finally:
            if run.uploads is not None:
                run.uploads.close()
            run.monitor.close()
            self.job_models.release(run)
            self.current_job = None
            self.remove_files(run.prompt_id, run.files, job_id)

    def _run_steps(self, run: Run) -> None:
        try:
            if run.early_error is not None:
                raise run.early_error
            if not run.submitted:
                self.job_models.prepare(run)
                run.workflow = self.prepare_inputs(run)
            run.lap("prepare", run.submitted_at)  # a prompt submitted early executes from its submission on
            if not run.submitted:
                self.submit(run)
        except MediaError as exc:
            return self.finish(run, Outcome(Status.FAILED, error=JobError(type="media_error", message=exc.message)))
        except ModelError as exc:
            return self.finish(run, Outcome(Status.FAILED, error=JobError(type="model_error", message=exc.message,
                                                                          details=exc.details)))
        except Stopped as exc:
            return self.finish(run, Outcome(exc.status, error=exc.error))
        except PromptRejected as exc:
            return self.finish(run, Outcome(Status.FAILED, error=rejection_error(exc)))
        run.uploads = OutputUploads(lambda item: self.upload_output(run, item), self._uploader,
                                    run.monitor.report_outputs, self._quick_to_copy)
        outcome = self.await_completion(run)
        run.nodes = outcome.nodes
        run.lap("execute")
        run.files = reported_files(outcome.outputs)
        if outcome.status is not Status.COMPLETED:
            return self.finish(run, outcome)
        # Most were stored while later nodes ran; any the socket missed are taken from the history now.
        run.uploads.add(collect(outcome.outputs, include_temp=run.job.include_previews))
        try:
            uploaded = run.uploads.finish()
        except OutputUnavailable as exc:  # ComfyUI will not serve what it reported: the job's failure
            return self.finish(run, Outcome(Status.FAILED, error=JobError(type="output_unavailable",
                                                                          message=exc.message)))
        run.lap("upload")
        return self.finish(run, outcome, outputs=uploaded)

    def prepare_inputs(self, run: Run) -> dict[str, Any]:
        """Fetch media, upload them into this attempt's own input subfolder, apply overrides, and point every
        save prefix into its own output subfolder (the attempt's prompt id names both)."""
        names = dict(run.renames)
        for i, item in enumerate(run.payload.get("media", [])):
            data = self._media_bytes(i, item)
            names[item["name"]] = self.comfy.upload_image(item["name"], data, subfolder=run.prompt_id)
        graph = payloads.graph(self.objects, run.payload)
        workflow = rewrite_media(apply_overrides(graph["workflow"], graph.get("overrides", [])), names)
        return files.isolate(workflow, run.prompt_id)

    def _media_bytes(self, index: int, item: dict[str, Any]) -> bytes:
        data = payloads.media_bytes(self.objects, item)
        if data is not None:
            return data
        try:
            return safe_fetch.fetch(item.get("url") or "", self.settings.limits.max_media_bytes,
                                    self.settings.media_fetch_timeout_s, self.allowlist)
        except MediaError as exc:
            raise MediaError(f"media[{index}] ({item['name']}): {exc.message}") from None

    def submit(self, run: Run) -> None:
        """Open the socket first so no event is missed, then queue the prompt."""
        self.events.ensure_open()
        answer = self.comfy.queue_prompt(run.workflow, self.events.client_id, run.prompt_id,
                                         payloads.extra_data(self.objects, run.payload))
        if answer.get("node_errors"):
            # ComfyUI runs the outputs that validated and drops the rest; a job wants all of them.
            self._stop_prompt_quietly(run)
            raise PromptRejected("some outputs failed validation", {
                "error": {"message": "Prompt outputs failed validation"}, "node_errors": answer["node_errors"]})
        self._uploader.submit(self._expect_outputs, run.job, files.saving_nodes(run.workflow))

    def _expect_outputs(self, job: Job, nodes: list[str]) -> None:
        """On the upload thread while the prompt runs: tell object storage where its files will go, so storing
        the last one (on the job's path to its end) does not also make its folders."""
        for node_id in nodes[:EXPECTED_FOLDERS_MAX]:
            self.objects.expect(keys.output_folder(job.id, job.created_at, node_id))

    def await_completion(self, run: Run) -> Outcome:
        """Follow the prompt to its end, writing progress and heartbeats and honouring cancel."""
        watch = _Watch(self, run)
        while True:
            outcome = watch.tick()
            if outcome is not None:
                outcome.nodes = watch.tracker.node_timings()
                return outcome

    def upload_output(self, run: Run, item: OutputItem) -> Output:
        """Copy one output from ComfyUI to object storage under {job}/{node}/{stable name}, with the pointer that
        finds it by its id (jobs/output_ids.py); its record."""
        try:
            item, key, size = self._store_output(run, item)
        except OutputUnavailable as exc:
            raise OutputUnavailable(f"node {item.node_id}: {exc.message}") from None
        return Output(node_id=item.node_id, kind=item.kind, filename=item.name, key=key,
                      content_type=item.content_type, size_bytes=size, asset_id=output_ids.output_id(run.job, key))

    def _store_output(self, run: Run, item: OutputItem) -> tuple[OutputItem, str, int]:
        """(the output as stored, its key, its size); a text output is stored as it was reported."""
        if item.text is None:
            return self._copy_file(run, item)
        key = keys.output(run.job.id, run.job.created_at, item.node_id, item.name)
        return item, key, self._put(run.job, key, lambda: self.objects.put_bytes(key, item.text.encode(),
                                                                                 item.content_type))

    def _copy_file(self, run: Run, item: OutputItem) -> tuple[OutputItem, str, int]:
        local = None if may_convert(item, run.job.output) else self._local_file(item)
        if local is not None:  # stored straight from ComfyUI's folder, as it wrote it
            key = keys.output(run.job.id, run.job.created_at, item.node_id, item.name)
            return item, key, self._put(run.job, key, lambda: self.objects.put_file(key, local, item.content_type))
        with tempfile.NamedTemporaryFile(dir=self.scratch, prefix="out-", delete=True) as tmp:
            self.comfy.download(item.ref or {}, Path(tmp.name))
            item = convert_file(Path(tmp.name), item, run.job.output)  # the job's output format, if any
            key = keys.output(run.job.id, run.job.created_at, item.node_id, item.name)
            return item, key, self._put(run.job, key, lambda: self.objects.put_file(key, tmp.name, item.content_type))

    def _put(self, job: Job, key: str, put: Callable[[], int]) -> int:
        """Store an output and, beside it (together: one round trip to R2), its pointer; the output's size."""
        size, _ = run_all([put, lambda: output_ids.store_pointer(self.objects, job, key)])
        return size

    def _quick_to_copy(self, item: OutputItem) -> bool:
        """A text, or a file of at most QUICK_COPY_BYTES in ComfyUI's folder on this machine."""
        if item.text is not None:
            return True
        local = self._local_file(item)
        try:
            return local is not None and local.stat().st_size <= QUICK_COPY_BYTES
        except OSError:
            return False

    def _local_file(self, item: OutputItem) -> Path | None:
        find = getattr(self.comfy, "local_file", None)  # a ComfyUI whose folders are on this machine
        return find(item.ref or {}) if find is not None and item.ref else None

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

    def remove_files(self, tag: str, refs: list[dict[str, Any]], job_id: str | None = None) -> None:
        """Delete a prompt's files (its `tag` subfolders and every file its history named) from ComfyUI's
        folders, however it ended, so no later prompt on this ComfyUI (another tenant's) can read them.
        A failure here is logged, never the job's."""
        folders = getattr(self.comfy, "folders", None)
        if folders is None:
            return
        try:
            folders.remove_job_files(tag, refs)
        except OSError as exc:
            logs.event(log, "job.files_not_removed", logging.WARNING, job_id=job_id, worker_id=self.worker_id,
                       error=str(exc))

    def release(self, run: Run, reason: str) -> None:
        """ComfyUI went away mid-job: requeue the job while attempts remain, else fail it."""
        self._release_quietly(run, JobError(type="comfyui_unavailable", message=reason))

    def _release_quietly(self, run: Run, error: JobError) -> None:
        try:
            self.lifecycle.release(run.job, error)
        except BackendError as exc:  # the sweeper will find the silent attempt and requeue it
            logs.event(log, "job.release_failed", logging.WARNING, job_id=run.job.id, error=exc.message)

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
        self.next_progress = now
        self.next_history_poll = now + _HISTORY_POLL_S
        self.stopping: Outcome | None = None  # set once we asked ComfyUI to stop our prompt
        self.stop_sent_at = 0.0
        self.dirty = False
        self.progress: Progress | None = None
        self.outputs: dict[str, Any] = {}  # UI outputs by node, as `executed` announced them
        self.complete_stream = True  # False once the socket dropped: events may be missing, /history decides
        self.preview: tuple[int, str, bytes] | None = None  # the newest frame not yet handed to the monitor
        self.preview_seq = 0
        self.events: list[dict[str, Any]] = list(run.events)  # what an SSE watcher replays; kept with the heartbeat

    def tick(self) -> Outcome | None:
        now = time.monotonic()
        if self.run.monitor.moved is not None:
            raise self.run.monitor.moved
        if self.stopping is None and (decided := self._check_cancel_and_deadline(now)) is not None:
            return decided
        if self.stopping is not None and now - self.stop_sent_at > _INTERRUPT_GRACE_S:
            return self.stopping  # ComfyUI never confirmed; the job's fate is ours to write
        event = self.w.events.next(timeout_s=0.2)
        if event is not None and event.type in {"reconnected", "disconnected"}:
            self.complete_stream = False
        outcome = self._on_event(event) if event is not None else None
        if outcome is None and (event is None or event.type in {"reconnected", "disconnected"}):
            outcome = self._poll_history(now, force=event is not None and event.type == "reconnected")
        self._write_progress(now)
        return outcome

    def _check_cancel_and_deadline(self, now: float) -> Outcome | None:
        if self.run.monitor.cancel_requested():
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
        # On reconnect ComfyUI re-sends `executing` without a prompt id for the client's running prompt; older
        # preview frames carry none either (this socket's client runs one prompt at a time).
        return event.type in {"executing", "progress_text", "preview"}

    def _on_event(self, event: Event) -> Outcome | None:
        if not self._mine(event):
            return None
        self.dirty |= self.tracker.apply(event)
        if event.type == "executed":
            self._on_executed(event.data)
        elif event.type == "preview":
            self._on_preview(event)
        elif event.type == "execution_success":
            if self.complete_stream:
                return Outcome(Status.COMPLETED, outputs=self.outputs)
            return outcome_from_history(self._history_until_present(), self.stopping)
        elif event.type == "executing" and event.data.get("node") is None and event.prompt_id is not None:
            # The prompt is over and its history written; its end message was missed somehow.
            entry = self.w.comfy.history(self.run.prompt_id)
            return outcome_from_history(entry, self.stopping) if entry is not None else None
        if event.type == "execution_error":
            return Outcome(Status.FAILED, error=execution_error(event.data))
        if event.type == "execution_interrupted":
            return self.stopping or Outcome(Status.FAILED, error=JobError(
                type="interrupted", message="ComfyUI interrupted the prompt", node_id=event.data.get("node_id"),
                node_class=event.data.get("node_type")))
        return None

    def _on_executed(self, data: dict[str, Any]) -> None:
        """An output node finished: store what it shows now, while later nodes run."""
        node, shown = data.get("node"), data.get("output")
        if not isinstance(node, str) or not isinstance(shown, dict):
            return
        self.outputs[node] = shown
        if self.run.uploads is not None:
            self.run.uploads.add(collect({node: shown}, include_temp=self.run.job.include_previews))

    def _on_preview(self, event: Event) -> None:
        fmt = event.image_format
        if event.image and fmt is not None:
            self.preview_seq += 1
            self.preview = (self.preview_seq, fmt, event.image)

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
        """Hand the newest progress (and preview frame) to the monitor, which writes them in one round trip, at
        most twice a second."""
        if (not self.dirty and self.preview is None) or now < self.next_progress:
            return
        self.next_progress = now + PROGRESS_WRITE_S
        if self.dirty:
            self.dirty = False
            self.progress = self.tracker.snapshot()
            seq = self.events[-1]["seq"] + 1 if self.events else 1
            self.events = [*self.events[-(PROGRESS_EVENTS_KEPT - 1):],
                           {"seq": seq, "at": utcnow().isoformat(), "progress": self.progress.model_dump(mode="json")}]
            self._send_progress_webhook()
        frame, self.preview = self.preview, None
        preview = None if frame is None else {"seq": frame[0], "format": frame[1], "data_b64": _b64(frame[2])}
        self.run.monitor.report(self.progress or self.tracker.snapshot(), self.events, preview)

    def _send_progress_webhook(self) -> None:
        job = self.run.job
        if job.webhook_url and job.webhook_progress:
            shown = job.model_copy(update={"progress": self.progress})
            threading.Thread(target=webhooks.send_progress, args=(self.w.services, shown), daemon=True).start()


def _early_ok(payload: dict[str, Any] | None) -> bool:
    """Whether a wake-up's job can go to ComfyUI before its attempt is claimed: it carries its payload and names
    no model files (their download holds leases and takes long: it waits for the claim)."""
    return payload is not None and not payload.get("models")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def reported_files(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file (output, preview, input) a prompt's UI outputs say it wrote or showed."""
    return [item.ref for item in collect(outputs, include_temp=True) if item.ref]


def outcome_from_history(entry: dict[str, Any], stopping: Outcome | None = None) -> Outcome:
    """What a history entry says about how the prompt ended."""
    status = entry.get("status") or {}
    if status.get("completed") and status.get("status_str") == "success":
        return Outcome(Status.COMPLETED, outputs=entry.get("outputs") or {})
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
