"""The v2 event stream in isolation: what a poll turns into (preview frames, only what changed), and a stream
that ends at its time limit so the SDK reconnects."""

from __future__ import annotations

from dataclasses import replace

from conftest import submit
from fastapi import FastAPI
from fastapi.testclient import TestClient

from comfy_saas.jobs.model import Progress, Status
from comfy_saas.v2 import mount
from comfy_saas.v2.events import Poll, Seen, frames

PREVIEW = {"seq": 3, "format": "jpeg", "data_b64": "/9j/AA=="}


def test_a_running_job_streams_its_latest_preview_once(svc):
    job = submit(svc).model_copy(update={"status": Status.RUNNING, "progress": Progress(percent=50, node_id="2",
                                                                                         node_class="KSampler")})
    seen = Seen()
    first, over = frames(svc, Poll(job, False, PREVIEW, 0), seen)
    assert not over and first[0].startswith("event: status") and '"status":"running"' in first[0]
    assert any(f.startswith("event: progress") and '"value":0.5' in f for f in first)
    preview = next(f for f in first if f.startswith("event: preview"))
    assert '"content_type":"image/jpeg"' in preview and '"node_id":"2"' in preview and "/9j/AA==" in preview
    assert frames(svc, Poll(job, False, PREVIEW, 0), seen) == ([], False)  # nothing new, nothing sent
    canceling, _ = frames(svc, Poll(job, True, {**PREVIEW, "seq": 4}, 0), seen)
    assert canceling[0].startswith("event: status") and '"canceling"' in canceling[0]
    assert any(f.startswith("event: preview") for f in canceling)


def test_a_stream_ends_at_its_time_limit_without_a_terminal_status(svc):
    job = submit(svc)  # queued, and no worker here: it stays queued
    svc.settings = replace(svc.settings, api_keys="k")
    app = FastAPI()
    mount(app, lambda: svc, events_stream_s=0.6)
    with TestClient(app) as client:
        text = client.get(f"/api/v2/jobs/{job.id}/events", headers={"Authorization": "Bearer k"}).text
    assert text.startswith("event: status") and '"status":"queued"' in text and '"queue_position":0' in text
    assert text.count("event: status") == 1  # nothing changed; the client reconnects for a fresh snapshot


def test_a_key_holds_at_most_its_streams_open_and_gets_one_back_when_it_closes_one(tmp_path):
    """The contract's 429 too_many_streams, with Retry-After; a plain poll still answers, and a closed stream
    frees its place."""
    import requests
    from conftest import ALICE, WORKFLOW, running_server, wait_until

    with running_server(tmp_path, v2_max_streams_per_key=2) as server:
        job_id = server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "pool": "idle"}).json()["id"]
        url = f"{server.base}/api/v2/jobs/{job_id}/events"

        def open_stream() -> requests.Response:
            return requests.get(url, headers=ALICE, stream=True, timeout=10)

        streams = [open_stream() for _ in range(2)]
        lines = [s.iter_lines() for s in streams]  # held: a dropped line iterator closes its stream
        try:
            assert all(s.status_code == 200 for s in streams)
            assert all(next(it).startswith(b"event: status") for it in lines)
            refused = open_stream()
            assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert server.call("GET", f"/api/v2/jobs/{job_id}", ALICE).json()["status"] == "queued"
            streams.pop().close()

            def reopened() -> requests.Response | None:
                again = open_stream()
                if again.status_code == 200:
                    return again
                again.close()
                return None

            streams.append(wait_until(reopened, 10, "a stream after one was closed"))
        finally:
            for s in streams:
                s.close()
