"""What a running job shows before it ends: the outputs stored so far, the latest preview frame, and timings
that add up. The worker runs on the ComfyUI double as a real process, outputs go to moto's S3 server."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest import wait_until
from PIL import Image

from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job, Status
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.runner.comfy_client import ComfyClient
from comfy_saas.runner.worker import Worker

# Node 2 saves at once; node 3 then runs for about two seconds (sending preview frames) before node 4 saves.
EARLY_AND_LATE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x3366FF}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
    "3": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": 20, "delay": 0.1,
                                                       "send_preview": True, "send_text": False, "seed": 3}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "late"}},
}


@contextmanager
def worker(svc: Services, comfy: Any) -> Iterator[Worker]:
    stop = threading.Event()
    w = Worker(svc, comfy)
    thread = threading.Thread(target=w.run, args=(stop, 0.2), daemon=True)
    thread.start()
    try:
        yield w
    finally:
        stop.set()
        thread.join(30)


def submit(svc: Services, workflow: dict, **extra: Any) -> str:
    request = JobRequest(workflow=workflow, **extra)
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides"})
    return svc.lifecycle.create(request, payload)[0].id


def finished(svc: Services, job_id: str, timeout_s: float = 30) -> Job:
    return wait_until(lambda: (j := svc.store.get(job_id)) is not None and j.terminal and j, timeout_s, job_id)


def services(store: Any, s3: Any) -> Services:
    return Services(store.settings, store, s3)


def image_at(s3: Any, key: str) -> Image.Image:
    return Image.open(io.BytesIO(s3.read(key)))


def test_an_output_is_shown_and_stored_while_later_nodes_still_run(store, s3, double):
    svc = services(store, s3)
    with worker(svc, double.client):
        job_id = submit(svc, EARLY_AND_LATE)
        running = wait_until(lambda: (j := store.get(job_id)).status is Status.RUNNING and j.outputs and j, 20,
                             "an output while the job runs")
        job = finished(svc, job_id)
    assert [o.node_id for o in running.outputs] == ["2"]
    assert image_at(s3, running.outputs[0].key).getpixel((0, 0)) == (0x33, 0x66, 0xFF)  # stored, not just named
    assert job.status is Status.COMPLETED, job.error
    assert [o.node_id for o in job.outputs] == ["2", "4"]
    assert job.outputs[0].key == running.outputs[0].key


def test_the_latest_preview_frame_is_kept_while_it_runs_and_deleted_with_the_job(store, s3, double):
    svc = services(store, s3)
    with worker(svc, double.client):
        job_id = submit(svc, EARLY_AND_LATE)
        first = wait_until(lambda: store.latest_preview(job_id), 20, "a preview frame")
        later = wait_until(lambda: (f := store.latest_preview(job_id)) and f["seq"] > first["seq"] and f, 20,
                           "a newer preview frame")
        job = finished(svc, job_id)
    assert first["format"] == "jpeg" and later["format"] == "jpeg"
    frame = Image.open(io.BytesIO(base64.b64decode(later["data_b64"])))
    assert frame.format == "JPEG" and frame.size == (16, 16)
    store.delete_job(job)
    assert store.latest_preview(job_id) is None


def test_phase_timings_add_up_to_the_total(store, s3, double):
    svc = services(store, s3)
    with worker(svc, double.client):
        jobs = [finished(svc, submit(svc, EARLY_AND_LATE if i == 0 else {**EARLY_AND_LATE, "3": {
            **EARLY_AND_LATE["3"], "inputs": {**EARLY_AND_LATE["3"]["inputs"], "steps": 1, "seed": i}}}))
                for i in range(3)]
    for job in jobs:
        t = job.timings
        phases = t.queue_wait_ms + (t.download_ms or 0) + t.prepare_ms + t.execute_ms + t.upload_ms + t.finish_ms
        assert job.status is Status.COMPLETED, job.error
        assert abs(phases - t.total_ms) <= 1.0, t
        assert t.execute_ms > 0 and t.total_ms >= t.execute_ms


def test_outputs_come_over_http_when_comfyuis_folders_are_not_on_this_machine(store, s3, double):
    svc = services(store, s3)
    with worker(svc, ComfyClient(double.url)):  # no folders: every output is fetched through /view
        job = finished(svc, submit(svc, EARLY_AND_LATE))
    assert job.status is Status.COMPLETED, job.error
    assert [image_at(s3, o.key).size for o in job.outputs] == [(16, 16), (16, 16)]


def test_a_prompt_sent_while_the_claim_was_lost_is_stopped_and_nothing_of_it_kept(store, s3, double):
    svc = services(store, s3)
    slow = {**EARLY_AND_LATE, "3": {**EARLY_AND_LATE["3"], "inputs": {**EARLY_AND_LATE["3"]["inputs"], "steps": 100}}}
    job_id = submit(svc, slow)
    svc.lifecycle.cancel(job_id)  # wins the job's first move; its wake-up is still in the queue
    prompt_id = f"{job_id}-1"
    with worker(svc, double.client) as w:
        wait_until(lambda: _stop_sent(double.url, prompt_id), 20, "the early prompt stopped")
        wait_until(lambda: not _in_queue(double.client, prompt_id), 20, "the early prompt gone from ComfyUI")
        assert w.current_job is None
    entry = double.client.history(prompt_id)
    assert entry is None or entry["status"]["status_str"] != "success"
    job = store.get(job_id)
    assert job.status is Status.CANCELLED and job.outputs == [] and job.attempts == 0
    assert s3.list_keys(keys.object_prefix(job_id, job.created_at)) == []


def _stop_sent(url: str, prompt_id: str) -> bool:
    """ComfyUI was asked to interrupt the prompt or to delete it from its queue."""
    seen = json.loads(urllib.request.urlopen(url + "/double/events", timeout=10).read())
    return any(e.get("prompt_id") == prompt_id or prompt_id in json.dumps(e.get("body")) for e in seen)


def _in_queue(comfy: ComfyClient, prompt_id: str) -> bool:
    q = comfy.queue()
    return any(item[1] == prompt_id for item in q.get("queue_running", []) + q.get("queue_pending", []))
