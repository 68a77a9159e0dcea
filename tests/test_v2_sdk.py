"""The official Comfy API v2 SDK (`comfy-sdk`, pinned in the dev extra) drives the local stack unchanged: only
COMFY_BASE_URL and the key differ from Comfy Cloud."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_sdk import (
    BlobNotFound,
    Comfy,
    HashMismatch,
    IdempotencyKeyReuse,
    InvalidWorkflow,
    JobFailed,
    MissingAsset,
    NotFound,
    OutputReady,
    Progress,
    QueueFull,
    StatusChange,
    Unauthorized,
    WorkflowFormatUi,
)
from comfy_sdk.exceptions import to_sdk_error, translating
from conftest import KEYS, Server, running_server, wait_until
from PIL import Image

SLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 50}},
        "2": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": 4, "delay": 0.25,
                                                         "send_preview": True, "send_text": False, "seed": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sdk"}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("sdk")) as srv:
        yield srv


@pytest.fixture
def client(stack: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", stack.base)
    with Comfy(api_key="alice-key") as c:
        yield c


def slow(steps: int, delay: float) -> dict:
    node = {**SLOW["2"], "inputs": {**SLOW["2"]["inputs"], "steps": steps, "delay": delay}}
    return {**SLOW, "2": node}


def test_events_give_a_status_snapshot_outputs_before_the_end_and_stop_on_their_own(client: Comfy):
    job = client.submit(client.workflows.from_json(SLOW))
    events = list(job.events())  # ends by itself after the terminal status
    assert isinstance(events[0], StatusChange) and events[0].status in {"queued", "running"}
    assert events[-1] == StatusChange(status="succeeded", queue_position=None)
    outputs = [i for i, e in enumerate(events) if isinstance(e, OutputReady)]
    assert outputs and max(outputs) < len(events) - 1
    assert events[outputs[0]].output.name == "sdk_0.png"
    assert any(isinstance(e, Progress) and e.nodes_total == 3 for e in events)
    job.refresh()
    assert job.status == "succeeded" and [o.name for o in job.get_outputs("3")] == ["sdk_0.png"]


def test_a_finished_job_can_be_rehydrated_listed_and_its_workflow_read(client: Comfy):
    job = client.run(client.workflows.from_json(SLOW))
    again = client.jobs.get(job.id)
    assert again.status == "succeeded" and again.outputs[0].id == job.outputs[0].id
    assert again.get_workflow().graph == SLOW and again.get_workflow().format == "api"
    assert job.id in {s.id for s in client.list_jobs(limit=5)}
    labelled = client.submit(client.workflows.from_json(SLOW), metadata={"run": "r1"})
    assert [s.id for s in client.list_jobs(metadata={"run": "r1"})] == [labelled.id]
    assert labelled.metadata == {"run": "r1"}
    snapshot = list(again.events())  # a finished job: its last progress and outputs, then the terminal status
    assert [type(e) for e in snapshot] == [Progress, OutputReady, StatusChange] and snapshot[-1].status == "succeeded"


def test_outputs_download_through_the_sdk(client: Comfy, tmp_path: Path):
    job = client.run(client.workflows.from_json(SLOW))
    data = job.outputs[0].to_bytes()
    assert Image.open(io.BytesIO(data)).size == (16, 16)
    assert job.outputs[0].to_file(tmp_path / "out.png").read_bytes() == data


def test_cancel_of_a_running_job_is_canceling_then_canceled(client: Comfy):
    job = client.submit(client.workflows.from_json(slow(steps=400, delay=0.05)))
    wait_until(lambda: job.refresh().status == "running", 30, "the job to run")
    job.cancel()
    assert job.status == "canceling"
    statuses = [e.status for e in job.events() if isinstance(e, StatusChange)]
    assert statuses[-1] == "canceled" and set(statuses) <= {"canceling", "canceled"}
    job.wait(timeout=30)
    assert job.status == "canceled" and job.error.code == "canceled"


def test_an_explicit_idempotency_key_replays_the_same_request_and_refuses_another(client: Comfy):
    wf = client.workflows.from_json(SLOW)
    first = client.submit(wf, idempotency_key="sdk-key-1")
    assert client.submit(wf, idempotency_key="sdk-key-1").id == first.id
    with pytest.raises(IdempotencyKeyReuse):
        client.submit(client.workflows.from_json(slow(2, 0.0)), idempotency_key="sdk-key-1")


def test_every_refusal_is_a_typed_sdk_exception(client: Comfy, stack: Server, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(InvalidWorkflow) as invalid:
        client.submit(client.workflows.from_json({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    assert "1" in invalid.value.details["node_errors"]
    ui = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}
    with pytest.raises(WorkflowFormatUi):  # the SDK refuses it itself; the server says the same
        client.submit(client.workflows.from_json(ui))
    with pytest.raises(Exception) as server_side:
        client._low.post_jobs(ui)
    assert isinstance(to_sdk_error(server_side.value), WorkflowFormatUi)
    with pytest.raises(NotFound):
        client.jobs.get("0123456789abcdef0123456789abcdef")
    with Comfy(api_key="not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.jobs.get("0123456789abcdef0123456789abcdef")
    with Comfy(api_key="bob-key") as bob, pytest.raises(NotFound):  # another user's job: not found
        bob.jobs.get(client.submit(client.workflows.from_json(SLOW)).id)
    ref = {"__type": "core/ASSET", "info": {"id": "00000000-0000-4000-8000-000000000000"}}
    missing = {**SLOW, "4": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    with pytest.raises(MissingAsset):
        client.submit(client.workflows.from_json(missing))
    with pytest.raises(HashMismatch), translating():
        client._low.post_assets(io.BytesIO(b"bytes"), "text/plain", "a.txt", expected_hash="blake3:" + "0" * 64)
    with pytest.raises(BlobNotFound), translating():
        client._low.asset_from_hash("blake3:" + "0" * 64, file_path="a.txt")


def test_a_full_queue_is_queue_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import comfy_sdk.client

    monkeypatch.setattr(comfy_sdk.client, "_QUEUE_RETRY_BUDGET", 0.0)  # surface the 429 instead of riding it out
    with running_server(tmp_path, api_keys=f"{KEYS}, dave-key:dave@idle", max_active_jobs_per_user=1) as srv:
        monkeypatch.setenv("COMFY_BASE_URL", srv.base)
        with Comfy(api_key="dave-key") as dave:
            dave.submit(dave.workflows.from_json(SLOW))
            with pytest.raises(QueueFull) as full:
                dave.submit(dave.workflows.from_json(SLOW))
    assert full.value.retry_after >= 1


def test_upload_dedups_and_jobs_run_by_asset_handle_and_by_file_name(client: Comfy, tmp_path: Path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    first, second = client.assets.from_file(photo), client.assets.from_file(photo)
    first.commit()
    second.commit()  # the same bytes: the SDK finds the blob by hash and mints over it, nothing is sent again
    assert first.created_new is True and second.created_new is False
    assert second.hash == first.hash  # (the same name over the same blob: the identical record, as-is)
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
    by_handle = client.workflows.from_json(graph)
    by_handle.set_input("1", "image", first)
    # the plain file name first (so no earlier job left the file in ComfyUI's input folder), then the handle
    for wf in (client.workflows.from_json(graph), by_handle):
        job = client.run(wf)
        pixel = Image.open(io.BytesIO(job.get_outputs("3")[0].to_bytes())).convert("RGB").getpixel((0, 0))
        assert pixel == (55, 245, 245), job.id


def test_a_failed_node_is_job_failed_with_the_node_and_its_traceback(client: Comfy):
    graph = {**SLOW, "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "boom"}}}
    with pytest.raises(JobFailed) as failed:
        client.run(client.workflows.from_json(graph))
    error = failed.value.error
    assert (error.code, error.node_id, error.class_type) == ("node_execution_error", "2", "FailNode")
    assert "boom" in error.message and "fail_node" in (error.traceback or "")
