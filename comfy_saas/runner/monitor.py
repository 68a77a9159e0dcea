"""Watching a running attempt off the worker's event loop: a thread polls the cancel flag and writes
heartbeats and progress, so the loop that reads ComfyUI's WebSocket never waits on the store (each of
those calls is a network round trip on Modal).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from comfy_saas import logs
from comfy_saas.errors import ComfySaasError
from comfy_saas.jobs.lifecycle import AttemptMoved, Lifecycle
from comfy_saas.jobs.model import Job, Output, Progress

log = logging.getLogger(__name__)

PROGRESS_WRITE_S = 0.5  # at most two progress writes a second per job
_TICK_S = 0.05


class AttemptMonitor:
    """One attempt's cancel flag and heartbeats. The worker reads `cancel_requested()` and `moved`, and
    hands over progress with `report()`; all store calls happen on the monitor's own thread."""

    def __init__(self, lifecycle: Lifecycle, job: Job, cancel_poll_s: float, heartbeat_s: float) -> None:
        self._lifecycle = lifecycle
        self._job = job
        self._cancel_poll_s = cancel_poll_s
        self._heartbeat_s = heartbeat_s
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._events: list[dict[str, Any]] = []
        self._outputs: list[Output] = []
        self._preview: dict[str, Any] | None = None  # a frame not written yet
        self._dirty = False
        self._outputs_dirty = False
        self.moved: AttemptMoved | None = None
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{job.id[:8]}", daemon=True)
        self._thread.start()

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def report(self, progress: Progress, events: list[dict[str, Any]], preview: dict[str, Any] | None = None
               ) -> None:
        """The newest progress (and preview frame); written within PROGRESS_WRITE_S (the first one waits that long
        too, so a job that finishes sooner costs no progress write at all)."""
        with self._lock:
            self._progress, self._events, self._dirty = progress, list(events), True
            if preview is not None:
                self._preview = preview

    def report_outputs(self, outputs: list[Output]) -> None:
        """The outputs stored so far: written with the next progress write (not at once: the last output is
        stored just before the prompt ends, and a write then would only hold up the job's terminal one)."""
        with self._lock:
            self._outputs, self._outputs_dirty = list(outputs), True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        start = time.monotonic()
        next_cancel, next_progress, next_beat = start, start + PROGRESS_WRITE_S, start + self._heartbeat_s
        while not self._stop.wait(_TICK_S) and self.moved is None:
            now = time.monotonic()
            if now >= next_cancel:
                next_cancel = now + self._cancel_poll_s
                self._poll_cancel()
            if ((self._dirty or self._outputs_dirty) and now >= next_progress) or now >= next_beat:
                next_progress, next_beat = now + PROGRESS_WRITE_S, now + self._heartbeat_s
                self._beat()

    def _poll_cancel(self) -> None:
        try:
            if self._lifecycle.store.cancel_requested(self._job.id):
                self._cancel.set()
        except ComfySaasError as exc:  # the store is away: keep running, ask again next time
            logs.event(log, "monitor.cancel_poll_failed", logging.WARNING, job_id=self._job.id, error=str(exc))

    def _beat(self) -> None:
        with self._lock:
            progress, events, outputs, preview = self._progress, self._events, self._outputs, self._preview
            self._dirty = self._outputs_dirty = False
            self._preview = None
        try:
            self._lifecycle.heartbeat(self._job, progress, events, outputs=outputs, preview=preview)
        except AttemptMoved as moved:
            self.moved = moved
        except ComfySaasError as exc:
            logs.event(log, "monitor.heartbeat_failed", logging.WARNING, job_id=self._job.id, error=str(exc))
