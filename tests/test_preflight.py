"""Pre-flight validation at submit against a real /object_info capture; nothing is queued for a bad workflow."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.errors import PreflightFailed
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services
from comfy_saas.runner.worker import Worker
from comfy_saas.workflows import preflight

CAPTURE = Path(__file__).resolve().parent / "fixtures" / "comfyui"  # recorded from ComfyUI 0.3.64

CHAIN = json.loads(next(json.loads(line) for line in (CAPTURE / "s02_b_chain.jsonl").read_text().splitlines()
                        if '"POST"' in line and "/prompt" in line)["request_body"])["prompt"]


@pytest.fixture
def svc(db_path: Path, settings, tmp_path: Path) -> Services:
    """Services whose store holds the real ComfyUI's catalogue, as a worker publishes it."""
    svc = Services.over(LocalDict(db_path), LocalQueue(db_path), settings, LocalStore(tmp_path / "out", "s", "http://h"))
    svc.store.save_object_info(preflight.compact(json.loads((CAPTURE / "object_info_full.json").read_text())))
    return svc


def refused(svc: Services, workflow: dict) -> list[dict]:
    with pytest.raises(PreflightFailed) as info:
        submit_job(svc, Caller("k"), {"workflow": workflow})
    body = info.value.to_dict()
    assert body["type"] == "preflight_failed" and body["field"] == "workflow"
    return body["details"]


def save(src: str, idx: int = 0) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [src, idx], "filename_prefix": "p"}}


def test_a_valid_workflow_from_the_transcripts_passes(svc: Services, db_path: Path):
    assert CHAIN and submit_job(svc, Caller("k"), {"workflow": CHAIN})[1] is True
    assert LocalQueue(db_path).len(total=True) == 1


@pytest.mark.parametrize(("workflow", "node", "cls", "kind"), [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": save("1")}, "1", "NoSuchNode", "invalid_prompt"),
    ({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1}}, "2": save("1")},
     "1", "EmptyImage", "required_input_missing"),
    ({"2": save("9")}, "2", "SaveImage", "bad_linked_input"),
    ({"1": CHAIN.get("1"), "2": save("1", 3)}, "2", "SaveImage", "bad_linked_input"),
    ({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
      "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
      "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
      "4": save("2")}, "1", "CheckpointLoaderSimple", "value_not_in_list"),
])
def test_each_problem_gets_a_422_naming_the_node(svc: Services, db_path: Path, workflow, node, cls, kind):
    problems = refused(svc, workflow)
    assert any(p["node_id"] == node and p["class_type"] == cls and p["type"] == kind for p in problems), problems
    assert LocalQueue(db_path).len(total=True) == 0 and svc.store.list_jobs().jobs == []


def test_every_problem_is_listed_at_once(svc: Services):
    workflow = {"1": {"class_type": "NoSuchNode", "inputs": {}},
                "2": {"class_type": "ImageInvert", "inputs": {}},
                "3": save("8"),
                "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.ckpt"}}}
    kinds = sorted(p["type"] for p in refused(svc, workflow))
    assert kinds == ["bad_linked_input", "invalid_prompt", "required_input_missing", "value_not_in_list"]


def test_without_a_capture_submissions_pass_through(db_path: Path, settings, tmp_path: Path):
    svc = Services.over(LocalDict(db_path), LocalQueue(db_path), settings, LocalStore(tmp_path / "o", "s", "http://h"))
    assert submit_job(svc, Caller("k"), {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})[1]


def test_a_worker_publishes_its_comfyuis_catalogue(db_path: Path, settings, tmp_path: Path, double):
    stop = threading.Event()
    svc = Services.over(LocalDict(db_path), LocalQueue(db_path), settings, LocalStore(tmp_path / "o", "s", "http://h"))
    worker = Worker(svc, double.client)
    stop.set()
    worker.run(stop)
    schema = svc.store.object_info()
    assert {"SaveImage", "SlowPassthrough", "LoadImage"} <= set(schema)
    assert schema["LoadImage"]["outputs"] == ["IMAGE", "MASK"]


def test_a_node_a_newer_worker_published_is_accepted_though_this_process_kept_the_old_catalogue(
        svc: Services, db_path: Path, settings, tmp_path: Path):
    workflow = {"1": {"class_type": "BrandNewNode", "inputs": {}}, "2": save("1")}
    assert refused(svc, workflow)  # this process now keeps the catalogue it read
    newer = preflight.compact(json.loads((CAPTURE / "object_info_full.json").read_text()))
    newer["BrandNewNode"] = {**newer["EmptyImage"], "required": {}}
    worker_side = Services.over(LocalDict(db_path), LocalQueue(db_path), settings,
                                LocalStore(tmp_path / "out", "s", "http://h"))
    worker_side.store.save_object_info(newer)  # another process: a worker with the new node started
    assert submit_job(svc, Caller("k"), {"workflow": workflow})[1] is True


@pytest.mark.parametrize(("value", "kind", "message"), [
    (10**30, "value_bigger_than_max", f"Value {10**30} bigger than max of 16384"),
    (0, "value_smaller_than_min", "Value 0 smaller than min of 1"),
])
def test_numbers_outside_their_bounds_are_refused_as_comfyui_words_it(svc: Services, value: int, kind: str,
                                                                       message: str) -> None:
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": value, "height": 8, "batch_size": 1,
                                                             "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
    [problem] = refused(svc, workflow)
    assert (problem["node_id"], problem["type"], problem["message"], problem["details"]) == ("1", kind, message,
                                                                                             "width")


def test_a_link_that_is_not_two_long_is_refused(svc: Services) -> None:
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0, 0], "filename_prefix": "b"}}}
    [problem] = refused(svc, workflow)
    assert (problem["node_id"], problem["type"], problem["details"]) == ("2", "bad_linked_input", "images")
