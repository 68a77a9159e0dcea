"""What one SSE watcher costs the store: its calls, counted on the twins while a worker writes progress, stay
within one round trip (two calls) per progress interval, however long the stream runs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ADMIN, KEYS, free_port, submit, wait_until

from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.jobs.model import Progress, Status
from comfy_saas.jobs.services import Services
from comfy_saas.runner.monitor import PROGRESS_WRITE_S
from comfy_saas.web.http import create_app

EVENTS = 8


class CountingDict:
    """A twin Dict that counts every call made through it."""

    def __init__(self, target: LocalDict) -> None:
        self._target = target
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
            return attr(*args, **kwargs)
        return counted


@pytest.fixture
def watched_api(db_path: Path, tmp_path: Path) -> Iterator[tuple[str, CountingDict]]:
    """The API on uvicorn over a store whose Dict calls are counted (the test's own writes are not)."""
    import uvicorn

    counted = CountingDict(LocalDict(db_path))
    settings = Settings(data_dir=tmp_path, url_signing_secret="s", public_base_url="http://127.0.0.1:9", api_keys=KEYS)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(Services.over(counted, LocalQueue(db_path), settings)),
                                       host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started, 30, "uvicorn")
        yield f"http://127.0.0.1:{port}", counted
    finally:
        uv.should_exit = True
        thread.join(10)


def test_a_watcher_costs_one_round_trip_per_progress_interval(watched_api, svc: Services):
    base, counted = watched_api
    job = svc.lifecycle.start(submit(svc), "worker-1")
    svc.store.settle()
    events: list[dict[str, Any]] = []

    def progress(n: int) -> None:  # the worker's next progress write, made as soon as the watcher saw the last
        events.append({"seq": n, "type": "progress", "value": n, "max": EVENTS})
        svc.store.write_progress(job, Progress(percent=100 * n / EVENTS), events)

    progress(1)
    seen, started = [], time.monotonic()
    before = counted.calls
    with requests.get(f"{base}/v1/jobs/{job.id}/events", headers=ADMIN, stream=True, timeout=30) as stream:
        assert stream.status_code == 200, stream.text
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) < EVENTS:
                    progress(len(seen) + 1)
                elif len(seen) == EVENTS:
                    svc.lifecycle.finish(job, Status.COMPLETED)
    duration, calls = time.monotonic() - started, counted.calls - before
    assert [e.get("seq") for e in seen[:EVENTS]] == list(range(1, EVENTS + 1))
    assert seen[-1]["status"] == "completed"
    polls = duration / PROGRESS_WRITE_S + 1  # the most polls a stream this long can make
    assert calls <= 2 * polls + 6, f"{calls} store calls in {duration:.2f}s ({calls / duration:.1f}/s)"
