"""A job's download step, before its inputs are prepared: every model file it names by URL is taken from the
shared cache, or waited for while another job downloads it, or downloaded once under a claim (streamed to a
temp file, verified against its sha256, moved into place), then linked where this worker's ComfyUI looks.

While the step runs the job reports progress (file, bytes, percent) and heartbeats, and honours cancel and
its deadline. The job holds a lease on every file it uses until it ends, so eviction leaves them alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_saas import logs
from comfy_saas.backends import model_sources, safe_fetch
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import MediaError, ModelError
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import JobError, Progress, Status, utcnow
from comfy_saas.jobs.model_cache import ModelCache
from comfy_saas.jobs.model_leases import Lease
from comfy_saas.jobs.request import ModelInput
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import PROGRESS_EVENTS_KEPT
from comfy_saas.runner.model_links import ModelLinks

log = logging.getLogger(__name__)

_PROGRESS_WRITE_S = 0.5
_LEASE_GRACE_S = 300.0
_WAIT = "wait"  # an evictor holds the file: look again shortly


class Stopped(Exception):
    """The job was cancelled, or ran out of time, during the step."""

    def __init__(self, status: Status, error: JobError) -> None:
        super().__init__(error.message)
        self.status, self.error = status, error


@dataclass
class Got:
    sha256: str
    path: Path
    fetched: int  # bytes this job downloaded for it (0: cached, or another job downloaded it)


class JobModels:
    """The download step of one worker. `links` is its ComfyUI's job-model folder tree (None: it has none)."""

    def __init__(self, svc: Services, links: ModelLinks | None, owner: str) -> None:
        self.svc, self.links, self.owner = svc, links, owner
        self.cache = ModelCache(svc)
        self.allowlist = safe_fetch.parse_allowlist(svc.settings.private_url_allowlist)
        self.auth = model_sources.headers_for(model_sources.tokens_from(svc.settings))

    def prepare(self, run: Any) -> bool:
        """Fetch and link the job's model files (reading its payload once, for the later steps too); False
        when it names none. ModelError fails the job; Stopped ends it as cancelled or timed out."""
        if run.payload is None:
            run.payload = self.svc.store.payload(run.job.id)
        specs = [ModelInput.model_validate(m) for m in run.payload.get("models") or []]
        if not specs:
            return False
        if self.links is None:
            raise ModelError("this worker's ComfyUI has no folder for job models (launch ComfyUI through "
                             "comfy-saas, or set COMFY_COMFYUI_MODELS_DIR to one of its extra model paths)")
        run.download_bytes = 0
        try:
            with _Report(self.svc, run) as report:
                for i, spec in enumerate(specs):
                    got = _Fetch(self, run, report, i, spec).obtain()
                    run.download_bytes += got.fetched
                    shown = self.links.link(spec.folder, spec.name or "", got.path, got.sha256)
                    if shown != spec.name:
                        run.renames[spec.name] = shown
                report.show(report.latest or Progress())  # a cancel seen at the very end still counts
        finally:
            run.lap("download")  # timings.download_ms, whether the step succeeded or not
        return True

    def release(self, run: Any) -> None:
        """The job is over: give back its leases (best effort: unreleased leases run out on their own)."""
        leases: list[Lease] = list(run.leases.values())
        run.leases.clear()
        try:
            run_all([lambda lease=lease: self.cache.leases.release(lease) for lease in leases])
        except Exception as exc:  # never fails a job that has already ended
            logs.event(log, "model.release_failed", logging.WARNING, job_id=run.job.id, error=str(exc))


class _Report:
    """Progress and heartbeats during the step from a thread of their own, so a stalled download still
    heartbeats and shows how far it got (at most two progress writes a second); cancel and deadline checks.
    The step calls `show()` with its latest progress, which also raises what the thread found."""

    def __init__(self, svc: Services, run: Any) -> None:
        self.svc, self.run = svc, run
        self.latest: Progress | None = None
        self.problem: BaseException | None = None
        self._keep_alive: Callable[[], None] | None = None  # renews a download claim while the step holds one
        self._keep_alive_lock = threading.Lock()
        self.interrupt = safe_fetch.Interrupt()  # fired when the job must stop, so a stalled read ends at once
        self._written: Progress | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"report-{run.job.id}", daemon=True)

    def __enter__(self) -> _Report:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def keep_alive(self, renew: Callable[[], None] | None) -> None:
        """Renew a claim from the thread from now on (None: stop; returns once no renewal is in flight)."""
        with self._keep_alive_lock:
            self._keep_alive = renew

    def show(self, progress: Progress) -> None:
        self.latest = progress
        if self.problem is not None:
            raise self.problem

    def _loop(self) -> None:
        settings, next_check, next_beat, next_renew = self.svc.settings, 0.0, 0.0, 0.0
        renew_every = min(settings.heartbeat_interval_s, settings.model_cache.claim_ttl_s / 4)
        while not self._stop.wait(0.05) and self.problem is None:
            now = time.monotonic()
            try:
                if now >= next_check:
                    next_check = now + settings.cancel_poll_s
                    self._check(now)
                if now >= next_renew:
                    next_renew = now + renew_every
                    with self._keep_alive_lock:  # also while a stalled read blocks the step itself
                        if self._keep_alive is not None:
                            self._keep_alive()
                if self.latest is not self._written or now >= next_beat:
                    next_beat = now + settings.heartbeat_interval_s
                    self._write(self.latest)
                    self._stop.wait(_PROGRESS_WRITE_S)
            except Exception as exc:  # handed to the step, which raises it (AttemptMoved, Stopped, store errors)
                self.problem = exc
                self.interrupt.fire()

    def _write(self, progress: Progress | None) -> None:
        self._written = progress
        events = self.run.events
        if progress is not None and (not events or events[-1]["progress"] != progress.model_dump(mode="json")):
            seq = events[-1]["seq"] + 1 if events else 1
            events.append({"seq": seq, "at": utcnow().isoformat(), "progress": progress.model_dump(mode="json")})
            del events[:-PROGRESS_EVENTS_KEPT]
        self.svc.lifecycle.heartbeat(self.run.job, progress, events)

    def _check(self, now: float) -> None:
        if self.svc.store.cancel_requested(self.run.job.id):
            raise Stopped(Status.CANCELLED, JobError(type="cancelled", message="cancelled by request"))
        if now > self.run.deadline:
            raise Stopped(Status.FAILED, JobError(type="timeout", message="job exceeded its run time"))


def _progress(spec: ModelInput, done: int, total: int | None, phase: str = "download") -> Progress:
    percent = round(100.0 * done / total, 1) if total else 0.0
    return Progress(percent=percent, phase=phase, file=f"{spec.folder}/{spec.name}", bytes_done=done,
                    bytes_total=total)


class _Fetch:
    """Getting one model file for one job: cached, waited for, or downloaded under the claim."""

    def __init__(self, models: JobModels, run: Any, report: _Report, index: int, spec: ModelInput) -> None:
        self.m, self.run, self.report, self.spec = models, run, report, spec
        self.cache, self.files, self.cfg = models.cache, models.cache.files, models.cache.cfg
        self.url = model_sources.public_url(spec.url)
        self.ident = keys.model_ident(spec.sha256, spec.url)
        self.where = f"models[{index}] ({spec.folder}/{spec.name}) {self.url}"

    def obtain(self) -> Got:
        sha = self.spec.sha256 or self.cache.sha_for_url(self.spec.url)
        deadline = min(time.monotonic() + self.cfg.wait_timeout_s, self.run.deadline)
        while True:
            found = self._cached(sha) if sha is not None else None
            if isinstance(found, Got):
                return found
            if found is None and (got := self._claim_or_wait()) is not None:
                return got
            if time.monotonic() > deadline:
                raise ModelError(f"{self.where}: another job's download of it did not finish in time")
            time.sleep(self.cfg.poll_s)
            sha = sha or self.cache.sha_for_url(self.spec.url)

    def _claim_or_wait(self) -> Got | None:
        """Download under the claim when it is free; else show the download in flight (None: wait)."""
        gen, claim = self.cache.current_claim(self.ident)
        if claim is not None and claim["state"] == "failed" and claim["url"] == self.url:
            raise ModelError(claim["error"], claim.get("details"))
        if claim is not None and claim["state"] == "failed":
            gen += 1  # the same content failed from another URL: try ours
        elif claim is not None:
            self.report.show(_progress(self.spec, claim.get("bytes") or 0, claim.get("total"), "download_wait"))
            return None
        body = self.cache.try_claim(self.ident, gen, self.m.owner, self.url)
        return None if body is None else self._download(gen, body)

    def _pin(self, sha: str) -> None:
        if sha not in self.run.leases:
            until = self.cache.now() + max(0.0, self.run.deadline - time.monotonic()) + _LEASE_GRACE_S
            self.run.leases[sha] = self.cache.leases.acquire(sha, self.run.job.id, until)

    def _cached(self, sha: str) -> Got | str | None:
        """The file when it is here (after a Volume reload if it was recorded elsewhere); _WAIT while an
        evictor holds it; None when it must be downloaded. Holds a lease on it from now on."""
        self._pin(sha)  # before looking for an evictor: see model_leases.py
        if self.cache.evicting(sha):
            return _WAIT
        if self.files.exists(sha):
            return Got(sha, self.files.path(sha), 0)
        if self.cache.record(sha) is not None:
            self.files.refresh()
            if self.files.exists(sha):
                return Got(sha, self.files.path(sha), 0)
        return None

    def _download(self, gen: int, claim: dict[str, Any]) -> Got | None:
        """Download under a won claim (None: an evictor holds the file; the claim is given back, look again)."""
        known = self.spec.sha256 or self.cache.sha_for_url(self.spec.url)
        if known is not None:  # finished between our look and our claim, or on disk but forgotten
            self.files.refresh()
            found = self._cached(known)
            if found is not None:
                self.cache.done(self.ident, gen)
                return self._adopted(found) if isinstance(found, Got) else None
        try:
            result = self._stream(gen, claim)
        except MediaError as exc:
            message = f"{self.where}: {exc.message.replace(repr(self.spec.url), 'it')}"
            self.cache.failed(self.ident, gen, claim, message, [{"url": self.url}])
            raise ModelError(message, [{"url": self.url}]) from None
        except BaseException:
            self.cache.done(self.ident, gen)  # cancelled or broken: let another job take it over at once
            raise
        return self._place(gen, claim, result)

    def _stream(self, gen: int, claim: dict[str, Any]) -> tuple[Path, safe_fetch.Downloaded]:
        """The download itself; the claim is renewed (with the bytes so far, for waiting jobs) while it runs."""
        temp, seen = self.files.temp_path(), {"bytes": 0, "total": None}

        def on_progress(done: int, total: int | None) -> None:
            seen.update(bytes=done, total=total)
            self.report.show(_progress(self.spec, done, total))

        timeout = min(self.cfg.download_timeout_s, max(1.0, self.run.deadline - time.monotonic()))
        log.info("model.download %s", self.url, extra={"event": "model.download", "job_id": self.run.job.id,
                                                        "phase": "download"})
        self.report.keep_alive(lambda: self.cache.renew(self.ident, gen, {**claim, **seen}))
        try:
            result = safe_fetch.download(self.spec.url, temp, self.cfg.max_file_bytes, timeout, self.m.allowlist,
                                         headers_for=self.m.auth, on_progress=on_progress,
                                         interrupt=self.report.interrupt)
        except MediaError:
            self.report.show(_progress(self.spec, seen["bytes"], seen["total"]))  # an interrupt: why the job stops
            raise
        finally:
            self.report.keep_alive(None)
        return temp, result

    def _place(self, gen: int, claim: dict[str, Any], streamed: tuple[Path, safe_fetch.Downloaded]) -> Got:
        """Verify, lease, move into place, record; then make room. A mismatch keeps nothing."""
        temp, result = streamed
        if self.spec.sha256 and result.sha256 != self.spec.sha256:
            temp.unlink(missing_ok=True)
            details = [{"url": self.url, "expected_sha256": self.spec.sha256, "actual_sha256": result.sha256}]
            message = f"{self.where}: sha256 mismatch: expected {self.spec.sha256}, got {result.sha256}"
            self.cache.failed(self.ident, gen, claim, message, details)
            raise ModelError(message, details)
        sha = result.sha256
        self._pin(sha)  # leased before it is visible, so no evictor can take it from under us
        while self.cache.evicting(sha):  # an evictor that missed our lease may still remove the old copy
            self.report.show(_progress(self.spec, result.size, result.size, "download_wait"))
            time.sleep(self.cfg.poll_s)
        self.files.put(temp, sha)
        self.cache.remember(sha, result.size, self.spec.folder, self.spec.name or "", self.url, self.run.job.id,
                            self.spec.url)
        self.cache.done(self.ident, gen)
        self._make_room()
        return Got(sha, self.files.path(sha), result.transferred)

    def _adopted(self, got: Got) -> Got:
        if self.cache.record(got.sha256) is None:
            self.cache.remember(got.sha256, got.path.stat().st_size, self.spec.folder, self.spec.name or "",
                                self.url, self.run.job.id, self.spec.url)
        return got

    def _make_room(self) -> None:
        try:
            self.cache.evict_to_budget(keep=set(self.run.leases))
        except Exception as exc:  # over budget for a while is better than a failed job
            logs.event(log, "model.eviction_failed", logging.WARNING, job_id=self.run.job.id, error=str(exc))
