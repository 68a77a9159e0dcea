"""memory_snapshot_helper against a minimal stand-in of the ComfyUI modules it touches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parent.parent / "memory_snapshot_helper"

FAKE_TORCH = '''
import os
class device:
    def __init__(self, kind): self.type = kind if isinstance(kind, str) else "cuda"
    def __str__(self): return self.type
class cuda:
    selected = None
    @staticmethod
    def is_available(): return os.environ.get("FAKE_CUDA") == "1"
    @staticmethod
    def current_device():
        if not cuda.is_available(): raise RuntimeError("CUDA was touched without a GPU")
        return 0
    @staticmethod
    def set_device(i): cuda.selected = i
'''

FAKE_MODEL_MANAGEMENT = '''
import torch
class CPUState:
    GPU = 0
    CPU = 1
cpu_state = CPUState.GPU
def get_torch_device():
    if cpu_state == CPUState.CPU:
        return torch.device("cpu")
    else:
        return torch.device(torch.cuda.current_device())
def get_total_memory(dev=None):
    return (8 if dev.type == "cpu" else 24) * 1024 * 1024
total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)
'''

FAKE_SERVER = '''
from aiohttp import web
class PromptServer:
    instance = None
    def __init__(self): self.routes = web.RouteTableDef()
PromptServer.instance = PromptServer()
'''

SCRIPT = '''
import json, runpy, sys, asyncio
sys.path.insert(0, sys.argv[1])
helper = sys.argv[2]
runpy.run_path(helper + "/prestartup_script.py")
runpy.run_path(helper + "/prestartup_script.py")  # loaded twice: still one hook
import comfy.model_management as mm
out = {"device_at_import": str(mm.get_torch_device()), "vram_at_import": mm.total_vram}
import importlib.util
def load():
    spec = importlib.util.spec_from_file_location("memory_snapshot_helper", helper + "/__init__.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
load(); mod = load()
from server import PromptServer
routes = [r for r in PromptServer.instance.routes]
out["routes"] = [(r.method, r.path) for r in routes]
import os
os.environ["FAKE_CUDA"] = sys.argv[3]
resp = asyncio.run(routes[0].handler(None))
out["set_device"] = json.loads(resp.body)
out["vram_after"] = mm.total_vram
out["hooks"] = sum(1 for f in sys.meta_path if getattr(f, "_memory_snapshot_helper_hook", False))
print(json.dumps(out))
'''


def fake_comfyui(root: Path, model_management: str = FAKE_MODEL_MANAGEMENT) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "torch").mkdir()
    (root / "comfy" / "__init__.py").write_text("")
    (root / "comfy" / "model_management.py").write_text(textwrap.dedent(model_management))
    (root / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (root / "server.py").write_text(FAKE_SERVER)
    return root


def run(root: Path, cuda_after_restore: str = "1") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(HELPER), cuda_after_restore],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_snapshot_phase_stays_on_cpu_and_restore_moves_to_the_gpu(tmp_path: Path):
    result = run(fake_comfyui(tmp_path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["device_at_import"] == "cpu" and out["vram_at_import"] == 8
    assert out["routes"] == [["POST", "/cuda/set_device"]]
    assert out["set_device"] == {"status": "success", "device": "cuda"}
    assert out["vram_after"] == 24 and out["hooks"] == 1


def test_without_a_gpu_after_restore_it_still_answers(tmp_path: Path):
    out = json.loads(run(fake_comfyui(tmp_path), cuda_after_restore="0").stdout)
    assert out["set_device"] == {"status": "success", "device": "cpu"}


@pytest.mark.parametrize("changed", [
    FAKE_MODEL_MANAGEMENT.replace("torch.cuda.current_device()", "torch.cuda.default_device()"),
    FAKE_MODEL_MANAGEMENT + "\ndef other():\n    return torch.device(torch.cuda.current_device())\n",
])
def test_a_changed_comfyui_raises_a_named_error(tmp_path: Path, changed: str):
    result = run(fake_comfyui(tmp_path, changed))
    assert result.returncode != 0
    assert "ComfyUIChanged" in result.stderr and "comfy.model_management" in result.stderr


def test_the_preload_workflow_holds_each_checkpoint_with_the_helpers_output_node(tmp_path: Path):
    from comfy_saas.config.deploy import preload_workflow

    wf = preload_workflow(["a.safetensors", "b.ckpt"])
    assert wf["load1"] == {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.ckpt"}}
    assert wf["hold0"] == {"class_type": "SnapshotHold", "inputs": {"value": ["load0", 0]}}
    code = ("import importlib.util, json; spec = importlib.util.spec_from_file_location('h', '" + str(HELPER) +
            "/__init__.py'); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "n = m.NODE_CLASS_MAPPINGS['SnapshotHold']; print(json.dumps([n.OUTPUT_NODE, n.INPUT_TYPES(), "
            "n().hold(object())]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == [True, {"required": {"value": ["*", {}]}}, {"ui": {}}]
