"""The workflow front door through the real local server on the double: templates with named, typed inputs
(HTTP, Python client, CLI, remote functions), seeds drawn and recorded, wait mode, output formats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import ADMIN, ALICE, BOB, Server, running_server, wait_until
from PIL import Image
from ui_graphs import UI

from comfy_saas.client import Client

SIZED = {  # a prompt string, a bounded int, a choice, and an input named in a title
    "1": {"class_type": "EmptyImage", "_meta": {"title": "canvas $height=height"},
          "inputs": {"width": 16, "height": 12, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                   "scale_by": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tpl"}},
    "4": {"class_type": "SaveText", "inputs": {"text": "hello", "filename_prefix": "tpl_text"}},
}
DECLARED = {"prompt": {"node": "4", "input": "text", "description": "what to write"},
            "size": {"node": "1", "input": "width"}, "method": {"node": "2", "input": "upscale_method"}}
NOISE = {"1": {"class_type": "NoiseImage", "inputs": {"width": 24, "height": 16, "seed": -1}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "noise"}}}


def slow(seconds: float) -> dict:
    steps = max(1, int(seconds / 0.25))
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": steps, "delay": 0.25,
                                                              "send_preview": False, "send_text": False, "seed": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}}}


@pytest.fixture(scope="module")
def ready(server: Server) -> Server:
    """The shared server once its worker has published the double's catalogue."""
    wait_until(lambda: server.stack.services.store.object_info() is not None, 30, "the catalogue")
    return server


def put(server: Server, name: str, body: dict, headers: dict = ADMIN) -> requests.Response:
    return server.call("PUT", f"/v1/workflows/{name}", headers, json=body)


def image(output: dict) -> Image.Image:
    return Image.open(io.BytesIO(requests.get(output["url"], timeout=10).content))


# --- templates ---------------------------------------------------------------------------------------


def test_a_template_shows_types_bounds_and_choices_from_the_catalogue(ready: Server):
    stored = put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED, "description": "a sized image"})
    assert stored.status_code == 201, stored.text
    assert put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED}).status_code == 200  # replaced
    got = ready.call("GET", "/v1/workflows/sized").json()
    props = got["schema"]["properties"]
    assert props["prompt"] == {"type": "string", "default": "hello", "description": "what to write",
                               "x-targets": ["4.text"]}
    assert (props["size"]["type"], props["size"]["minimum"], props["size"]["maximum"]) == ("integer", 1, 16384)
    assert props["method"]["enum"] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert props["height"]["default"] == 12 and got["inputs"]["size"] == {"node": "1", "input": "width"}
    assert got["workflow"] == SIZED and got["shared"] is True
    assert "sized" in [t["name"] for t in ready.call("GET", "/v1/workflows").json()["templates"]]


@pytest.mark.parametrize(("inputs", "field", "words"), [
    ({"size": 0}, "inputs.size", "below the minimum 1"),
    ({"size": 99999}, "inputs.size", "above the maximum 16384"),
    ({"size": 2.5}, "inputs.size", "integer"),
    ({"method": "sideways"}, "inputs.method", "not one of the choices"),
    ({"colour": 3}, "inputs.colour", "not an input of this template"),
])
def test_out_of_range_and_unknown_inputs_get_422s_naming_them(ready: Server, inputs: dict, field: str, words: str):
    put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED})
    before = len(ready.stack.services.store.list_jobs(limit=100).jobs)
    resp = ready.call("POST", "/v1/workflows/sized/jobs", json={"inputs": inputs})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field and words in resp.json()["error"]["message"]
    assert len(ready.stack.services.store.list_jobs(limit=100).jobs) == before


def test_a_job_from_a_template_runs_with_its_inputs_and_job_options(ready: Server):
    put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED})
    resp = ready.call("POST", "/v1/workflows/sized/jobs?wait=20", json={
        "inputs": {"prompt": "from a template", "size": 20, "height": 10, "method": "bilinear"},
        "metadata": {"run": 1}})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["status"] == "completed" and job["template"] == "sized" and job["metadata"] == {"run": 1}
    by_kind = {o["kind"]: o for o in job["outputs"]}
    assert image(by_kind["image"]).size == (20, 10)
    assert requests.get(by_kind["text"]["url"], timeout=10).text == "from a template"


def test_templates_are_per_tenant(ready: Server):
    assert put(ready, "mine", {"workflow": SIZED}, ALICE).status_code == 201
    put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED})
    alice = {t["name"]: t["shared"] for t in ready.call("GET", "/v1/workflows", ALICE).json()["templates"]}
    assert alice["mine"] is False and alice["sized"] is True  # her own and the shared ones
    assert "mine" not in [t["name"] for t in ready.call("GET", "/v1/workflows", BOB).json()["templates"]]
    assert ready.call("GET", "/v1/workflows/mine", BOB).status_code == 404
    assert ready.call("DELETE", "/v1/workflows/sized", ALICE).status_code == 404  # shared: not hers to delete
    assert ready.call("DELETE", "/v1/workflows/mine", ALICE).json() == {"name": "mine", "deleted": True}
    assert ready.call("GET", "/v1/workflows/mine", ALICE).status_code == 404


def test_a_ui_template_takes_inputs_from_primitive_titles(ready: Server):
    ui = UI()
    ui.add(1, "PrimitiveNode", [5, "fixed"], outs=[("INT", "INT")], title="$seed")
    ui.node(1)["outputs"][0]["widget"] = {"name": "seed"}
    ui.add(2, "NoiseImage", [8, 8, 0, "fixed"], outs=[("IMAGE", "IMAGE")], widget_ins=[("seed", "INT")])
    ui.add(3, "SaveImage", ["ui_tpl"], ins=[("images", "IMAGE")])
    ui.connect(1, 0, 2, "seed", "INT")
    ui.connect(2, 0, 3, "images")
    got = put(ready, "noise-ui", {"workflow": ui.workflow()}).json()
    assert got["workflow_format"] == "ui" and got["inputs"] == {"seed": {"node": "2", "input": "seed"}}
    assert got["schema"]["properties"]["seed"]["x-seed"] is True
    job = ready.call("POST", "/v1/workflows/noise-ui/jobs?wait=20", json={"inputs": {"seed": "random"}}).json()
    assert job["status"] == "completed" and job["workflow_format"] == "ui"
    assert [(s["name"], s["node"], s["input"]) for s in job["seeds"]] == [("seed", "2", "seed")]


def test_client_run_and_the_cli_fill_inputs_by_name(ready: Server, tmp_path: Path):
    put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED})
    done = Client(ready.base, api_key="admin-key").run("sized", prompt="client", size=30, method="area")
    assert done["status"] == "completed" and image(done["outputs"][0]).size == (30, 12)
    exe = Path(sys.executable).parent / "comfy-saas"
    api = ["--url", ready.base, "--api-key", "admin-key"]
    out = subprocess.run([str(exe), "run", "sized", "--prompt", "cli", "--size", "22", "--method", "bicubic",
                          "--wait", "--out", str(tmp_path / "o"), *api], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    paths = out.stdout.split()[1:]
    assert sorted(Path(p).suffix for p in paths) == [".png", ".txt"]
    assert Image.open(next(p for p in paths if p.endswith(".png"))).size == (22, 12)
    helped = subprocess.run([str(exe), "run", "sized", "--help", *api], capture_output=True, text=True, timeout=60)
    assert "--size" in helped.stdout and "maximum 16384" in helped.stdout
    refused = subprocess.run([str(exe), "run", "sized", "--size", "0", *api], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "inputs.size" in refused.stderr


def test_other_modal_apps_manage_and_run_templates(ready: Server, monkeypatch: pytest.MonkeyPatch):
    import app

    monkeypatch.setattr(app, "_services", lambda: ready.stack.services)
    stored = app.put_template.local("remote-tpl", {"workflow": SIZED, "inputs": DECLARED}, user_id="carol")
    assert stored["schema"]["properties"]["size"]["maximum"] == 16384
    assert [t["name"] for t in app.list_templates.local(user_id="carol")["templates"]].count("remote-tpl") == 1
    job = app.submit_template_job.local("remote-tpl", {"inputs": {"size": 9}}, user_id="carol")
    assert job["template"] == "remote-tpl" and job["user_id"] == "carol"
    assert app.get_template.local("remote-tpl", user_id="dave")["error"]["status"] == 404
    refused = app.submit_template_job.local("remote-tpl", {"inputs": {"size": -3}}, user_id="carol")["error"]
    assert (refused["status"], refused["field"]) == (422, "inputs.size")
    assert app.delete_template.local("remote-tpl", user_id="carol")["deleted"] is True


# --- seeds ---------------------------------------------------------------------------------------------


def test_a_random_seed_is_recorded_and_the_recorded_workflow_reproduces_the_output(ready: Server, tmp_path: Path):
    job = ready.call("POST", "/v1/jobs?wait=20", json={"workflow": NOISE}).json()
    assert job["status"] == "completed", job
    (seed,) = job["seeds"]
    assert (seed["node"], seed["input"]) == ("1", "seed") and 0 <= seed["value"] < 2**50
    recorded = ready.call("GET", f"/v1/jobs/{job['id']}?include=workflow").json()["workflow"]
    assert recorded["1"]["inputs"]["seed"] == seed["value"]
    first = requests.get(job["outputs"][0]["url"], timeout=10).content
    with running_server(tmp_path / "fresh") as fresh:  # a fresh ComfyUI: nothing cached
        again = fresh.call("POST", "/v1/jobs?wait=20", json={"workflow": recorded}).json()
        other = {**recorded, "1": {**recorded["1"], "inputs": {**recorded["1"]["inputs"], "seed": seed["value"] + 1}}}
        different = fresh.call("POST", "/v1/jobs?wait=20", json={"workflow": other}).json()
        assert again["seeds"] == [] and requests.get(again["outputs"][0]["url"], timeout=10).content == first
        assert requests.get(different["outputs"][0]["url"], timeout=10).content != first


def test_a_repeated_idempotency_key_draws_the_same_seed(ready: Server):
    body = {"workflow": NOISE, "idempotency_key": "seed-repeat", "pool": "idle"}
    first, again = (ready.call("POST", "/v1/jobs", json=body) for _ in range(2))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and first.json()["seeds"] == again.json()["seeds"]


# --- wait mode ----------------------------------------------------------------------------------------
# The acceptance numbers (?wait=30 on a 1 s and on a 60 s workflow) scaled down: the same code paths.


def test_wait_answers_200_with_the_finished_job(ready: Server):
    resp = ready.call("POST", "/v1/jobs?wait=20", json={"workflow": slow(0.5)})
    assert resp.status_code == 200 and resp.json()["status"] == "completed" and resp.json()["outputs"]


def test_wait_answers_202_with_the_job_as_it_stands_then_get_long_polls(ready: Server):
    resp = ready.call("POST", "/v1/jobs?wait=0.5", json={"workflow": slow(2)})
    assert resp.status_code == 202 and resp.json()["status"] in {"queued", "running"}
    polled = ready.call("GET", f"/v1/jobs/{resp.json()['id']}?wait=20")
    assert polled.status_code == 200 and polled.json()["status"] == "completed"


def test_a_wait_above_the_cap_is_refused_naming_it(ready: Server):
    before = len(ready.stack.services.store.list_jobs(limit=100).jobs)
    resp = ready.call("POST", "/v1/jobs?wait=51", json={"workflow": NOISE})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "wait"
    assert "at most 50 seconds" in resp.json()["error"]["message"]
    assert len(ready.stack.services.store.list_jobs(limit=100).jobs) == before
    assert ready.call("GET", "/v1/jobs/x?wait=abc").status_code == 422


# --- output formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "content_type", "suffix", "pil"), [
    ({"format": "webp", "quality": 80}, "image/webp", ".webp", "WEBP"),
    ({"format": "jpeg"}, "image/jpeg", ".jpg", "JPEG"),
])
def test_output_format_converts_still_images(ready: Server, fmt: dict, content_type: str, suffix: str, pil: str):
    workflow = {**NOISE, "1": {**NOISE["1"], "inputs": {**NOISE["1"]["inputs"], "seed": 3}},
                "3": {"class_type": "SaveText", "inputs": {"text": "untouched", "filename_prefix": "t"}}}
    job = ready.call("POST", "/v1/jobs?wait=20", json={"workflow": workflow, "output": fmt}).json()
    assert job["status"] == "completed" and job["output"]["format"] == fmt["format"]
    picture, text = sorted(job["outputs"], key=lambda o: o["kind"] != "image")
    got = image(picture)
    assert (picture["content_type"], Path(picture["filename"]).suffix, got.format, got.size) == \
        (content_type, suffix, pil, (24, 16))
    assert picture["size_bytes"] == len(requests.get(picture["url"], timeout=10).content)
    assert text["content_type"].startswith("text/plain") and text["filename"].endswith(".txt")


def test_a_bad_output_format_is_refused(ready: Server):
    resp = ready.call("POST", "/v1/jobs", json={"workflow": NOISE, "output": {"format": "bmp"}})
    assert resp.status_code == 422 and resp.json()["error"]["field"].startswith("output")
    resp = ready.call("POST", "/v1/jobs", json={"workflow": NOISE, "output": {"format": "webp", "quality": 0}})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "output.quality"


def test_json_schema_of_a_template_is_valid_json_schema(ready: Server):
    import jsonschema

    put(ready, "sized", {"workflow": SIZED, "inputs": DECLARED})
    schema = ready.call("GET", "/v1/workflows/sized").json()["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"size": 20, "method": "area"})
    assert not validator.is_valid({"size": 0}) and not validator.is_valid({"nope": 1})
    assert json.dumps(schema)  # plain JSON
