"""Workers end to end: the store, the ComfyUI double as a real process, and moto's S3 server."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import start_double, wait_until
from PIL import Image

from comfy_saas.backends.objects import S3Store
from comfy_saas.config import Settings
from comfy_saas.jobs.model import Job, Status
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import JobStore
from comfy_saas.runner.comfy_process import ComfyProcess
from comfy_saas.runner.worker import Worker


def empty(color: int = 0xFF0000, size: int = 32) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}}


def save(src: str, prefix: str = "t") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": prefix}}


def slow(steps: int, delay: float, preview: bool = True) -> dict:
    return {"1": empty(), "2": {"class_type": "SlowPassthrough", "inputs": {
        "image": ["1", 0], "steps": steps, "delay": delay, "send_preview": preview, "send_text": True, "seed": 1}},
        "3": save("2", "slow")}


MULTI = {
    "1": empty(0x00FF00),
    "2": save("1", "multi"),
    "3": {"class_type": "SaveText", "inputs": {"text": "hello from comfy", "filename_prefix": "note"}},
    "4": {"class_type": "SaveAnimatedGIF", "inputs": {"images": ["1", 0], "filename_prefix": "clip", "frames": 4}},
    "5": {"class_type": "SaveAudioWAV", "inputs": {"seconds": 0.1, "frequency": 440.0, "filename_prefix": "a/tone"}},
}


@contextmanager
def workers(store: JobStore, objects: Any, settings: Settings, doubles: list[ComfyProcess],
            restart_on_failure: bool = False) -> Iterator[list[Worker]]:
    """Worker threads, one per double, stopped at the end."""
    stop, pool, threads = threading.Event(), [], []
    for proc in doubles:
        def recover(proc: ComfyProcess = proc) -> bool:
            if restart_on_failure:
                proc.restart(60)
                return True
            return False

        w = Worker(Services(settings, store, objects), proc.client, on_unhealthy=recover)
        pool.append(w)
        threads.append(threading.Thread(target=w.run, args=(stop, 0.2), daemon=True))
    for t in threads:
        t.start()
    try:
        yield pool
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def submit(store: JobStore, workflow: dict, **extra: Any) -> str:
    request = JobRequest(workflow=workflow, **extra)
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides"})
    return Services(store.settings, store, None).lifecycle.create(request, payload)[0].id


def finished(store: JobStore, job_id: str, timeout_s: float = 30) -> Job:
    return wait_until(lambda: (j := store.get(job_id)) is not None and j.terminal and j, timeout_s, f"job {job_id}")


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_a_job_with_image_text_video_and_audio_outputs_returns_them_all(store, s3: S3Store, settings, double):
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, MULTI))
    assert job.status is Status.COMPLETED, job.error
    kinds = {o.kind: o for o in job.outputs}
    assert set(kinds) == {"image", "text", "video", "audio"}
    assert download(s3.url(kinds["text"].key)) == b"hello from comfy"
    assert Image.open(io.BytesIO(download(s3.url(kinds["image"].key)))).getpixel((0, 0)) == (0, 255, 0)
    assert download(s3.url(kinds["audio"].key))[:4] == b"RIFF"
    # Once uploaded, nothing of the job stays in ComfyUI's folders for a later prompt to read.
    out_dir = Path(double.extra_args[double.extra_args.index("--output-directory") + 1])
    assert [p for p in out_dir.rglob("*")] == []
    assert download(s3.url(kinds["video"].key))[:6] == b"GIF89a"
    assert kinds["image"].content_type == "image/png" and kinds["audio"].content_type == "audio/wav"
    assert job.progress.percent == 100.0 and job.attempts == 1 and job.finished_at


def test_base64_media_is_uploaded_and_referenced(store, s3, settings, double):
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}, "3": save("2", "inv")}
    media = [{"name": "input.png", "base64": base64.b64encode(png((10, 20, 30))).decode()}]
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, workflow, media=media))
    assert job.status is Status.COMPLETED, job.error
    img = Image.open(io.BytesIO(download(s3.url(job.outputs[0].key))))
    assert img.getpixel((0, 0)) == (245, 235, 225)


def test_overrides_change_node_inputs(store, s3, settings, double):
    workflow = {"1": empty(0x000000, 16), "2": save("1", "ov")}
    overrides = [{"node": "1", "input": "width", "value": 24}]
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, workflow, overrides=overrides))
    assert Image.open(io.BytesIO(download(s3.url(job.outputs[0].key)))).size == (24, 16)


def test_progress_is_written_while_it_runs(store, s3, settings, double):
    with workers(store, s3, settings, [double]):
        job_id = submit(store, slow(steps=8, delay=0.15))
        seen = wait_until(lambda: (j := store.get(job_id)).progress and j.progress.step and j.progress.step >= 3 and j,
                          20, "progress with steps")
        job = finished(store, job_id)
    p = seen.progress
    assert p.steps == 8 and p.node_id == "2" and p.node_class == "SlowPassthrough" and p.nodes_total == 3
    assert 0 < p.percent < 100 and p.nodes_done >= 1
    assert job.status is Status.COMPLETED


def test_cancel_a_running_job_interrupts_only_its_prompt(store, s3, settings, double):
    with workers(store, s3, settings, [double]):
        job_id = submit(store, slow(steps=100, delay=0.1))
        wait_until(lambda: (j := store.get(job_id)).progress and j.progress.step, 20, "job running")
        Services(store.settings, store, s3).lifecycle.cancel(job_id)
        job = finished(store, job_id, 10)
    assert job.status is Status.CANCELLED and job.error.type == "cancelled"
    interrupts = [e for e in json.loads(download(double.url + "/double/events")) if e["type"] == "interrupt"]
    assert interrupts and {e["prompt_id"] for e in interrupts} == {f"{job_id}-{job.claim_seq - 1}"}
    assert all(e["running"] == e["prompt_id"] for e in interrupts)


def test_a_dropped_websocket_does_not_lose_the_job(store, s3, settings, double):
    with workers(store, s3, settings, [double]) as (w,):
        job_id = submit(store, slow(steps=40, delay=0.1))  # long enough to be running still when the drop comes
        wait_until(lambda: (j := store.get(job_id)).progress and j.progress.step, 20, "job running")
        urllib.request.urlopen(urllib.request.Request(double.url + "/double/drop_ws", method="POST"), timeout=5)
        job = finished(store, job_id)
    assert job.status is Status.COMPLETED and len(job.outputs) == 1
    assert w.events.reconnects >= 1
    assert Image.open(io.BytesIO(download(s3.url(job.outputs[0].key)))).size == (32, 32)


def test_comfyui_killed_mid_run_requeues_to_another_worker(store, s3, settings, double, tmp_path):
    second = start_double(tmp_path / "comfy2")
    try:
        with workers(store, s3, settings, [double, second]):
            job_id = submit(store, slow(steps=30, delay=0.1))
            wait_until(lambda: (j := store.get(job_id)).progress and j.progress.step, 20, "job running")
            victim = next(p for p in (double, second) if _runs(p, job_id))
            victim.proc.kill()
            job = finished(store, job_id, 60)
    finally:
        second.stop()
    assert job.status is Status.COMPLETED and job.attempts == 2
    keys = [o.key for o in job.outputs]
    assert len(keys) == len(set(keys)) == 1
    assert len(_objects_under(s3, job_id)) == 1  # the retry wrote the same key, not a second name


def test_a_comfyui_that_died_between_jobs_costs_the_next_job_no_attempt(store, s3, settings, double):
    """The health check before a job needs no ping when ComfyUI was just heard from, but a ComfyUI that died
    reads as closed on its socket at once: the wake-up goes back, ComfyUI is restarted, and the job runs as
    its first attempt."""
    with workers(store, s3, settings, [double], restart_on_failure=True):
        first = finished(store, submit(store, {"1": empty(0x0000FF), "2": save("1", "before")}))
        double.proc.kill()
        double.proc.wait(10)
        job = finished(store, submit(store, {"1": empty(0x00FF00), "2": save("1", "after")}), 120)
    assert first.status is Status.COMPLETED
    assert job.status is Status.COMPLETED and job.attempts == 1 and double.restarts == 1


def _runs(proc: ComfyProcess, job_id: str) -> bool:
    running = json.loads(download(proc.url + "/queue")).get("queue_running") or []
    return bool(running) and running[0][1].startswith(job_id)


def _objects_under(s3: S3Store, job_id: str) -> list[str]:
    listing = s3._client.list_objects_v2(Bucket=s3.bucket, Prefix="jobs/")
    return [o["Key"] for o in listing.get("Contents", []) if f"/{job_id}/" in o["Key"]]


def test_node_errors_fail_the_job_naming_node_class_and_reason(store, s3, settings, double):
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": -5, "height": 8, "batch_size": 1, "color": 0}},
           "2": save("1")}
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, bad))
    assert job.status is Status.FAILED and job.error.type == "validation_error"
    assert job.error.node_id == "1" and job.error.node_class == "EmptyImage"
    assert "smaller than min" in job.error.message and job.error.details[0]["details"] == "width"


def test_an_output_that_fails_validation_fails_the_job_even_if_others_would_run(store, s3, settings, double):
    partial = {"1": empty(), "2": save("1"), "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, partial))
    assert job.status is Status.FAILED and job.error.type == "validation_error"
    assert (job.error.node_id, job.error.node_class) == ("3", "SaveImage") and "filename_prefix" in job.error.message


def test_execution_error_fails_the_job_with_node_and_message(store, s3, settings, double):
    failing = {"1": empty(), "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "boom"}},
               "3": save("2")}
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, failing))
    assert job.status is Status.FAILED and job.error.type == "execution_error"
    assert (job.error.node_id, job.error.node_class) == ("2", "FailNode")
    assert job.error.message == "RuntimeError: boom"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "http://10.0.0.1/x.png",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x.png",
                                 "http://2130706433/x.png", "http://0x7f000001/x.png"])
def test_media_urls_into_our_network_fail_the_job(store, s3, settings, double, url):
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}, "2": save("1")}
    with workers(store, s3, settings, [double]):
        job = finished(store, submit(store, workflow, media=[{"name": "in.png", "url": url}]))
    assert job.status is Status.FAILED and job.error.type == "media_error"
    assert "refused" in job.error.message and "media[0]" in job.error.message


def test_the_timing_breakdown_adds_up_and_marks_cached_nodes(store, s3, settings, double):
    with workers(store, s3, settings, [double]):
        first = finished(store, submit(store, slow(steps=3, delay=0.05)))
        again = finished(store, submit(store, slow(steps=3, delay=0.05)))  # same graph: cached but the save
    t = first.timings
    phases = t.queue_wait_ms + t.prepare_ms + t.execute_ms + t.upload_ms + t.finish_ms
    assert abs(phases - t.total_ms) < 5
    expected_total = (first.finished_at - first.created_at).total_seconds() * 1000
    assert abs(t.total_ms - expected_total) < 5
    assert t.start_kind == "launched" and again.timings.start_kind == "warm"
    assert set(t.nodes) == {"1", "2", "3"} and t.nodes["2"].ms >= 150 and not t.nodes["2"].cached
    # Each job saves into its own folder (its own filename_prefix), so only the save node runs again.
    assert all(again.timings.nodes[n].cached and again.timings.nodes[n].ms == 0 for n in ("1", "2"))
    assert not again.timings.nodes["3"].cached


def test_a_warmup_runs_before_the_first_job_and_stays_out_of_its_breakdown(store, s3, settings, double, tmp_path):
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(slow(steps=5, delay=0.1)))
    warm_settings = replace(settings, warmup_workflow=str(warmup))
    with workers(store, s3, warm_settings, [double]):
        first = finished(store, submit(store, {"1": empty(0x123456), "2": save("1", "after_warmup")}))
        second = finished(store, submit(store, {"1": empty(0x654321), "2": save("1", "after_warmup")}))
    t = first.timings
    assert t.start_kind == "warm" and t.warmup_ms >= 500
    assert t.execute_ms < t.warmup_ms  # the warmup ran before the job, not inside it
    assert second.timings.warmup_ms is None


def test_a_drain_takes_every_queued_job_and_an_empty_one_returns_at_once(store, s3, settings, double):
    ids = [submit(store, {"1": empty(i), "2": save("1", "drain")}) for i in range(3)]
    worker = Worker(Services(settings, store, s3), double.client)
    assert worker.drain(idle_s=0.5) == 3
    assert all(store.get(i).status is Status.COMPLETED for i in ids)
    assert worker.drain(idle_s=30, first_wait_s=0.1) == 0  # nothing queued: no 30 s wait


def test_a_broken_warmup_never_stops_the_worker(store, s3, settings, double, tmp_path):
    bad = tmp_path / "warmup.json"
    bad.write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    with workers(store, s3, replace(settings, warmup_workflow=str(bad)), [double]):
        job = finished(store, submit(store, {"1": empty(0x0F0F0F), "2": save("1", "after_bad_warmup")}))
    assert job.status is Status.COMPLETED and job.timings.start_kind == "launched"
