"""The ComfyUI double refuses file paths exactly as ComfyUI's folder_paths and routes do: SaveImage outside
the output folder is an execution error with ComfyUI's message, /view answers 400/403/404 in ComfyUI's
order, /upload/image refuses an escape with 400; and no workflow creates a file outside its folders."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import start_double, wait_until

from comfy_saas.runner.comfy_process import ComfyProcess


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyProcess]:
    proc = start_double(tmp_path_factory.mktemp("paths") / "comfy")
    yield proc
    proc.stop()


def run(comfy: ComfyProcess, prompt: dict) -> dict:
    """Queue a prompt straight on ComfyUI and wait for its history entry."""
    prompt_id = uuid.uuid4().hex
    comfy.client.queue_prompt(prompt, "paths-test", prompt_id)
    return wait_until(lambda: comfy.client.history(prompt_id), 10, "the prompt's history")


def saves(prefix: str) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


@pytest.mark.parametrize("prefix", ["../../escaped", "a/../../../escaped", "/tmp/escaped_abs"])
def test_saving_outside_the_output_folder_is_an_execution_error_like_comfyui(comfy: ComfyProcess, prefix: str):
    root = comfy.folders.output.parent.parent
    entry = run(comfy, saves(prefix))
    assert entry["status"]["status_str"] == "error"
    event, data = entry["status"]["messages"][-1]
    assert event == "execution_error" and data["exception_type"] == "Exception" and data["node_id"] == "2"
    assert data["exception_message"].startswith("**** ERROR: Saving image outside the output folder is not allowed.")
    assert list(root.rglob("escaped*")) == [] and not list(Path("/tmp").glob("escaped_abs*"))


def test_a_prefix_with_subfolders_saves_inside(comfy: ComfyProcess):
    entry = run(comfy, saves("job1/sub/pic"))
    ref = entry["outputs"]["2"]["images"][0]
    assert ref == {"filename": "pic_00001_.png", "subfolder": "job1/sub", "type": "output"}
    assert (comfy.folders.output / "job1" / "sub" / "pic_00001_.png").is_file()


def view(comfy: ComfyProcess, **query: str) -> int:
    return requests.get(f"{comfy.url}/view?{urllib.parse.urlencode(query)}", timeout=10).status_code


def test_view_refuses_like_comfyui(comfy: ComfyProcess):
    (comfy.folders.output / "inside").mkdir(exist_ok=True)
    (comfy.folders.output / "inside" / "ok.png").write_bytes(b"png")
    (comfy.folders.output / "top.png").write_bytes(b"top")
    assert requests.get(f"{comfy.url}/view", timeout=10).status_code == 404  # no filename at all
    assert view(comfy, filename="") == 400
    assert view(comfy, filename="/etc/passwd") == 400
    assert view(comfy, filename="../x.png") == 400 and view(comfy, filename="a..b.png") == 400
    assert view(comfy, filename="ok.png", type="bogus") == 400
    assert view(comfy, filename="passwd", subfolder="../../../../etc") == 403
    assert view(comfy, filename="passwd", subfolder="/etc") == 403
    assert view(comfy, filename="missing.png") == 404
    assert view(comfy, filename="ok.png", subfolder="inside") == 200
    assert view(comfy, filename="ok.png [output]", subfolder="inside", type="input") == 200  # the tag wins
    # A directory part in the name is dropped, as ComfyUI does: subfolders go in `subfolder`.
    assert requests.get(f"{comfy.url}/view?filename=elsewhere/top.png", timeout=10).content == b"top"


def upload(comfy: ComfyProcess, name: str, **fields: str) -> requests.Response:
    return requests.post(f"{comfy.url}/upload/image", files={"image": (name, b"bytes")}, data=fields, timeout=10)


def test_upload_refuses_an_escape_like_comfyui(comfy: ComfyProcess):
    root = comfy.folders.input.parent
    assert upload(comfy, "a.png", subfolder="../escape").status_code == 400
    assert upload(comfy, "a.png", subfolder="/tmp/escape_upload").status_code == 400
    assert upload(comfy, "../escape.png").status_code == 400
    assert list(root.parent.rglob("escape*")) == [] and not Path("/tmp/escape_upload").exists()
    ok = upload(comfy, "a.png", subfolder="job7")
    assert ok.status_code == 200 and ok.json() == {"name": "a.png", "subfolder": "job7", "type": "input"}
    assert (comfy.folders.input / "job7" / "a.png").read_bytes() == b"bytes"


def test_annotated_names_reach_other_folders_as_in_comfyui(comfy: ComfyProcess):
    """Why the gateway refuses annotations: ComfyUI's LoadImage reads `name [output]` from the output folder."""
    saved = run(comfy, saves("shared"))["outputs"]["2"]["images"][0]["filename"]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": f"{saved} [output]"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copied"}}}
    assert run(comfy, prompt)["status"]["status_str"] == "success"
    listed = json.loads(requests.get(f"{comfy.url}/object_info/LoadImage", timeout=10).text)
    assert "job7/a.png" not in listed["LoadImage"]["input"]["required"]["image"][0]  # only top-level files listed
