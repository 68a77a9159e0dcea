"""memory_snapshot_helper against a minimal stand-in of the ComfyUI modules it touches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import free_port, wait_until

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
resp = asyncio.run(next(r for r in routes if r.path == "/cuda/set_device").handler(None))
out["set_device"] = json.loads(resp.body)
out["vram_after"] = mm.total_vram
out["hooks"] = sum(1 for f in sys.meta_path if getattr(f, "_memory_snapshot_helper_hook", False))
print(json.dumps(out))
'''


FAKE_FOLDER_PATHS = '''
import os
def get_full_path(folder, name):
    path = os.path.join(os.environ["FAKE_MODELS"], folder, name)
    return path if os.path.isfile(path) else None
'''


def fake_comfyui(root: Path, model_management: str = FAKE_MODEL_MANAGEMENT) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "torch").mkdir()
    (root / "comfy" / "__init__.py").write_text("")
    (root / "comfy" / "model_management.py").write_text(textwrap.dedent(model_management))
    (root / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (root / "server.py").write_text(FAKE_SERVER)
    (root / "folder_paths.py").write_text(FAKE_FOLDER_PATHS)
    return root


def run(root: Path, cuda_after_restore: str = "1") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(HELPER), cuda_after_restore],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_snapshot_phase_stays_on_cpu_and_restore_moves_to_the_gpu(tmp_path: Path):
    result = run(fake_comfyui(tmp_path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["device_at_import"] == "cpu" and out["vram_at_import"] == 8
    assert out["routes"] == [["POST", "/cuda/set_device"], ["POST", "/snapshot/warm"]]
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


# The stand-in as a running server: the helper's routes, plus /prompt and /history executing
# CheckpointLoaderSimple + SnapshotHold the way ComfyUI loads a checkpoint (on mm.get_torch_device() at load
# time), and /fake/restore, which makes CUDA appear as a memory snapshot restore on a GPU does.
SERVE = '''
import asyncio, json, os, runpy, sys, importlib.util
sys.path.insert(0, sys.argv[1])
runpy.run_path(sys.argv[2] + "/prestartup_script.py")
import comfy.model_management as mm, folder_paths
spec = importlib.util.spec_from_file_location("memory_snapshot_helper", sys.argv[2] + "/__init__.py")
helper = importlib.util.module_from_spec(spec); spec.loader.exec_module(helper)
from aiohttp import web
from server import PromptServer
loads, history = [], {}
routes = PromptServer.instance.routes
@routes.post("/prompt")
async def prompt(request):
    body = await request.json()
    for node in body["prompt"].values():
        if node["class_type"] == "CheckpointLoaderSimple":
            path = folder_paths.get_full_path("checkpoints", node["inputs"]["ckpt_name"])
            loads.append({"name": node["inputs"]["ckpt_name"], "device": str(mm.get_torch_device()),
                          "bytes": len(open(path, "rb").read())})
    history[body["prompt_id"]] = {"status": {"completed": True, "status_str": "success"}, "outputs": {}}
    return web.json_response({"prompt_id": body["prompt_id"], "number": 0, "node_errors": {}})
@routes.get("/history/{pid}")
async def hist(request):
    pid = request.match_info["pid"]
    return web.json_response({pid: history[pid]} if pid in history else {})
@routes.post("/fake/restore")
async def restore(request):
    os.environ["FAKE_CUDA"] = "1"
    return web.json_response({})
@routes.get("/fake/loads")
async def fake_loads(request):
    return web.json_response(loads)
app = web.Application(); app.add_routes(routes)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[3]), print=lambda *a: print("ready", flush=True))
'''


@pytest.fixture
def standin(tmp_path: Path):
    """The stand-in ComfyUI serving over HTTP, with one 3 MB checkpoint; CUDA absent until /fake/restore."""
    from types import SimpleNamespace

    from comfy_saas.runner.comfy_client import ComfyClient

    root = fake_comfyui(tmp_path / "comfyui")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "a.safetensors").write_bytes(b"w" * 3_000_000)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "FAKE_MODELS": str(tmp_path / "models"), "FAKE_CUDA": "0"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(root), str(HELPER), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    client = ComfyClient(base)
    try:
        wait_until(lambda: proc.poll() is not None or client.healthy(), 30, "the stand-in")
        assert proc.poll() is None, proc.stderr.read()
        yield SimpleNamespace(url=base, client=client)
    finally:
        proc.terminate()
        proc.wait(10)


def _post(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10).read()


def _loads(base: str) -> list:
    import urllib.request

    return json.loads(urllib.request.urlopen(f"{base}/fake/loads", timeout=10).read())


def test_checkpoints_warmed_in_the_snapshot_load_on_the_gpu_after_restore(standin):
    from comfy_saas import modal_runtime

    # Snapshot phase, as worker.py's launch_comfyui runs it: no CUDA; the files are read through, not loaded.
    assert modal_runtime.warm_checkpoints(standin, ["a.safetensors", "missing.ckpt"]) == {
        "warmed": {"a.safetensors": 3_000_000, "missing.ckpt": None}}
    assert _loads(standin.url) == []
    # Restore, as attach_gpu runs it: CUDA appears, the helper moves ComfyUI to it, then the preload.
    _post(f"{standin.url}/fake/restore")
    modal_runtime.attach_gpu(standin)
    assert modal_runtime.preload_checkpoints(standin, ["a.safetensors"]) is True
    assert _loads(standin.url) == [{"name": "a.safetensors", "device": "cuda", "bytes": 3_000_000}]


def test_a_preload_during_a_cpu_snapshot_would_have_loaded_on_the_cpu(standin):
    # Why the load waits for the restore: ComfyUI picks the device (and dtypes) when it loads.
    from comfy_saas import modal_runtime

    assert modal_runtime.preload_checkpoints(standin, ["a.safetensors"]) is True
    assert _loads(standin.url)[0]["device"] == "cpu"


def test_a_failed_preload_is_reported_not_raised(tmp_path: Path):
    from types import SimpleNamespace

    from comfy_saas import modal_runtime
    from comfy_saas.runner.comfy_client import ComfyClient

    nowhere = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}", client=ComfyClient("http://127.0.0.1:9"))
    assert modal_runtime.preload_checkpoints(nowhere, ["a.safetensors"]) is False
    assert modal_runtime.warm_checkpoints(nowhere, ["a.safetensors"]) == {"warmed": {}}
