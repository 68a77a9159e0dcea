"""Structured logs: JSON lines with job id, attempt, worker id and phase; nothing secret in them."""

from __future__ import annotations

import base64
import io
import json
import logging

from conftest import start_double, wait_until

from comfy_saas import logs
from comfy_saas.backends.objects import LocalStore
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services
from comfy_saas.runner.worker import Worker


def test_redaction_of_keys_signatures_and_base64():
    blob = base64.b64encode(b"x" * 300).decode()
    text = logs.redact(f"Authorization: Bearer sk-live-123 url?expires=1&sig=abcdef0123 whsec_c2VjcmV0 {blob}")
    assert "sk-live-123" not in text and "abcdef0123" not in text and "c2VjcmV0" not in text and blob not in text


def test_a_job_leaves_json_lines_with_its_ids_and_no_secrets(store, settings, tmp_path):
    stream = io.StringIO()
    logs.configure(logging.INFO, stream)
    double = start_double(tmp_path / "comfy")
    try:
        objects = LocalStore(tmp_path / "out", "s3cret-signing-key", "http://127.0.0.1:9")
        svc = Services(settings, store, objects)
        media = [{"name": "in.png", "base64": base64.b64encode(b"\x89PNG" + b"0" * 400).decode()}]
        body = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                          "color": 0}},
                             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "l"}}},
                "media": media}
        job_id = submit_job(svc, Caller("k"), body)[0]["id"]
        worker = Worker(svc, double.client, worker_id="w-logs")
        worker.process(store.next_job_id("default", 5))
        worker.events.close()
        wait_until(lambda: store.get(job_id).terminal, 20, "job finished")
    finally:
        double.stop()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = {(e.get("event"), e.get("job_id"), e.get("worker_id")) for e in lines}
    assert ("job.submitted", job_id, None) in events
    assert ("job.started", job_id, "w-logs") in events and ("job.finished", job_id, "w-logs") in events
    finished = next(e for e in lines if e.get("event") == "job.finished")
    assert finished["attempt"] == 1 and finished["phase"] == "finish" and finished["status"] == "completed"
    raw = stream.getvalue()
    assert media[0]["base64"] not in raw and "s3cret-signing-key" not in raw
