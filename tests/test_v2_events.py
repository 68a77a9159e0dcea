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
