"""The ComfyUI double's model folders behave like ComfyUI's: extra_model_paths.yaml roots, loader choices
that follow the folders' contents without a restart, and loaders that read the files."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_double

from comfy_saas.runner.comfy_process import ComfyProcess
from comfy_saas.runner.model_links import ModelLinks


@pytest.fixture
def tree(tmp_path: Path) -> ModelLinks:
    return ModelLinks(tmp_path / "models")


@pytest.fixture
def comfy(tmp_path: Path, tree: ModelLinks) -> Iterator[ComfyProcess]:
    config = tree.write_config(tmp_path / "extra_model_paths.yaml")
    proc = start_double(tmp_path / "comfy", "--extra-model-paths-config", str(config))
    yield proc
    proc.stop()


def choices(comfy: ComfyProcess, cls: str, field: str) -> list[str]:
    return comfy.client.object_info()[cls]["input"]["required"][field][0]


def prompt(comfy: ComfyProcess, workflow: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{comfy.url}/prompt", data=json.dumps({"prompt": workflow}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_loader_choices_follow_the_folders_without_a_restart(comfy: ComfyProcess, tree: ModelLinks, tmp_path: Path):
    assert choices(comfy, "LoraLoader", "lora_name") == []
    assert choices(comfy, "CheckpointLoaderSimple", "ckpt_name") == []
    (tree.root / "loras" / "b.safetensors").write_bytes(b"b")
    (tree.root / "loras" / "notes.txt").write_text("not a model")
    (tree.root / "loras" / "sub").mkdir()
    (tree.root / "loras" / "sub" / "c.pt").write_bytes(b"c")
    (tmp_path / "blob").write_bytes(b"a")
    tree.link("loras", "a.safetensors", tmp_path / "blob", "a" * 64)
    assert choices(comfy, "LoraLoader", "lora_name") == ["a.safetensors", "b.safetensors", "sub/c.pt"]
    assert choices(comfy, "LoraLoaderModelOnly", "lora_name") == ["a.safetensors", "b.safetensors", "sub/c.pt"]
    assert choices(comfy, "CheckpointLoaderSimple", "ckpt_name") == []


def test_an_unlisted_model_name_is_refused_as_comfyui_does(comfy: ComfyProcess, tree: ModelLinks):
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
                "2": {"class_type": "ModelSwatch", "inputs": {"model": ["1", 0], "width": 4, "height": 4}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    status, body = prompt(comfy, workflow)
    assert status == 400 and body["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
    (tree.root / "checkpoints" / "missing.safetensors").write_bytes(b"now here")
    assert prompt(comfy, workflow)[0] == 200
