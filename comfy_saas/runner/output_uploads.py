"""Storing a prompt's outputs as ComfyUI announces them (`executed`), while later nodes still run.

The worker's upload thread (one per worker, so it is warm and keeps its connection to ComfyUI) copies each
announced output to object storage, in announcement order, and tells the attempt's monitor what is stored
so far (the job's live state shows it). The worker waits for the last one only once the prompt has ended,
and finishes the job with all of them in its record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, wait

from comfy_saas.jobs.model import Output
from comfy_saas.runner.outputs import OutputItem


class OutputUploads:
    """`store_one` copies one output and returns its record; `on_stored` hears the records stored so far after
    each one, until the prompt has ended. Each output is stored once, however often it is announced. One that
    `quick` says is quick to copy (small, on this machine) is copied at once on the announcing thread when
    nothing is queued before it: handing it to the upload thread and back costs more than the copy."""

    def __init__(self, store_one: Callable[[OutputItem], Output], executor: Executor,
                 on_stored: Callable[[list[Output]], None] | None = None,
                 quick: Callable[[OutputItem], bool] = lambda item: False) -> None:
        self._store_one = store_one
        self._executor = executor
        self._on_stored = on_stored
        self._quick = quick
        self._seen: set[tuple[str, str]] = set()
        self._futures: list[Future] = []
        self._stored: list[Output] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._quiet = False  # the terminal record carries the outputs from here on
        self._closed = False

    def add(self, items: list[OutputItem]) -> None:
        """Queue the outputs not queued before (by node and stable name)."""
        for item in items:
            if (item.node_id, item.name) in self._seen:
                continue
            self._seen.add((item.node_id, item.name))
            if all(f.done() for f in self._futures) and self._quick(item):
                self._store(item)
            else:
                self._futures.append(self._executor.submit(self._store, item))

    def _store(self, item: OutputItem) -> None:
        if self._error is not None or self._closed:
            return  # the job has failed or ended already: the rest is not worth copying
        try:
            stored = self._store_one(item)
        except BaseException as exc:  # handed to the worker's thread by finish()
            self._error = exc
            return
        with self._lock:
            self._stored.append(stored)
            snapshot, quiet = list(self._stored), self._quiet
        if self._on_stored is not None and not quiet:
            self._on_stored(snapshot)

    def finish(self) -> list[Output]:
        """Wait for every queued output; all of them in the order a history entry lists them (by node, then
        as the node listed them). Re-raises the first failure to store one."""
        with self._lock:
            self._quiet = True
        wait(self._futures)
        if self._error is not None:
            raise self._error
        # A node's outputs were stored in the order it listed them; the stable sort keeps that.
        return sorted(self._stored, key=lambda o: (len(o.node_id), o.node_id))

    def close(self) -> None:
        """The job ended without needing what is still queued: skip it, and wait for the one being copied."""
        with self._lock:
            self._quiet = self._closed = True
        wait(self._futures)
