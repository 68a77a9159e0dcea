"""Storing a prompt's outputs as ComfyUI announces them (`executed`), while later nodes still run.

One background thread per attempt copies each announced output to object storage, in announcement order,
and tells the attempt's monitor what is stored so far (the job's live state shows it). The worker waits for
the last one only once the prompt has ended, and finishes the job with all of them in its record.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from comfy_saas.jobs.model import Output
from comfy_saas.runner.outputs import OutputItem

_DONE = object()


class OutputUploads:
    """`store_one` copies one output and returns its record; `on_stored` hears the records stored so far after
    each one (not after `close`). Each output is stored once, however often it is announced."""

    def __init__(self, store_one: Callable[[OutputItem], Output],
                 on_stored: Callable[[list[Output]], None] | None = None) -> None:
        self._store_one = store_one
        self._on_stored = on_stored
        self._queue: queue.Queue = queue.Queue()
        self._seen: set[tuple[str, str]] = set()
        self._stored: list[Output] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._quiet = False
        self._thread: threading.Thread | None = None

    def add(self, items: list[OutputItem]) -> None:
        """Queue the outputs not queued before (by node and stable name)."""
        fresh = [i for i in items if (i.node_id, i.name) not in self._seen]
        if not fresh:
            return
        self._seen.update((i.node_id, i.name) for i in fresh)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="output-uploads", daemon=True)
            self._thread.start()
        for item in fresh:
            self._queue.put(item)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is not None:
                continue  # the job has failed already: the rest is not worth copying
            try:
                stored = self._store_one(item)
            except BaseException as exc:  # handed to the worker's thread by finish()
                self._error = exc
                continue
            with self._lock:
                self._stored.append(stored)
                snapshot, quiet = list(self._stored), self._quiet
            if self._on_stored is not None and not quiet:
                self._on_stored(snapshot)

    def finish(self) -> list[Output]:
        """Wait for every queued output; all of them in the order a history entry lists them (node, then
        position). Re-raises the first failure to store one."""
        with self._lock:
            self._quiet = True  # the terminal record carries them from here on
        self._join()
        if self._error is not None:
            raise self._error
        # A node's outputs were stored in the order it listed them; the stable sort keeps that.
        return sorted(self._stored, key=lambda o: (len(o.node_id), o.node_id))

    def close(self) -> None:
        """Stop after the output being copied (the job ended without needing the rest)."""
        with self._lock:
            self._quiet = True
        self._error = self._error or _Abandoned()
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(_DONE)
            self._thread.join()
            self._thread = None


class _Abandoned(Exception):
    """Marks uploads closed before they were needed."""
