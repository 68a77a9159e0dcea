"""ComfyUI custom node: `POST /cuda/set_device` puts a snapshot-restored ComfyUI back on the GPU, and
`POST /snapshot/warm` reads checkpoint files through while the snapshot is taken.

The prestartup script kept ComfyUI CUDA-free while Modal took the memory snapshot; on restore the
worker calls /cuda/set_device once, before any job, and only then loads checkpoints (so ComfyUI picks
GPU devices and dtypes for them); /snapshot/warm touches neither torch nor CUDA, it only leaves the
files' pages in memory for that load. Loading this module twice registers the routes once.
"""

from __future__ import annotations

import logging

log = logging.getLogger("memory_snapshot_helper")


class SnapshotHold:
    """An output node that keeps whatever it is given: lets a preload workflow load checkpoints into
    ComfyUI's cache (on the CPU) during the snapshot phase, so a restored container skips the disk."""

    CATEGORY = "utils"
    FUNCTION = "hold"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"value": ("*", {})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types: dict) -> bool:
        return True

    def hold(self, value: object) -> dict:
        return {"ui": {}}


NODE_CLASS_MAPPINGS: dict = {"SnapshotHold": SnapshotHold}
NODE_DISPLAY_NAME_MAPPINGS: dict = {"SnapshotHold": "Snapshot hold (memory_snapshot_helper)"}
_ROUTE_FLAG = "_memory_snapshot_helper_route"


def set_device() -> dict:
    """Select CUDA device 0 when there is one and refresh ComfyUI's memory totals; what was chosen."""
    import comfy.model_management as mm
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    device = mm.get_torch_device()
    mm.total_vram = mm.get_total_memory(device) / (1024 * 1024)
    log.info("memory_snapshot_helper: ComfyUI now uses %s", device)
    return {"status": "success", "device": str(device)}


WARM_CHUNK_BYTES = 64 * 1024 * 1024


def warm(checkpoints: list) -> dict:
    """Read each checkpoint file (a name under models/checkpoints) through, without torch: the bytes read
    per name, None when ComfyUI does not know the file."""
    import folder_paths

    warmed = {}
    for name in checkpoints:
        path = folder_paths.get_full_path("checkpoints", name)
        if path is None:
            warmed[name] = None
            continue
        size = 0
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(WARM_CHUNK_BYTES):
                size += len(chunk)
        warmed[name] = size
    log.info("memory_snapshot_helper: warmed %s", warmed)
    return {"status": "success", "warmed": warmed}


def register(server: object) -> bool:
    """Add the routes to a PromptServer once; False if they were already added."""
    if getattr(server, _ROUTE_FLAG, False):
        return False
    import asyncio

    from aiohttp import web

    @server.routes.post("/cuda/set_device")
    async def _cuda_set_device(request: web.Request) -> web.Response:
        return web.json_response(set_device())

    @server.routes.post("/snapshot/warm")
    async def _snapshot_warm(request: web.Request) -> web.Response:
        names = (await request.json()).get("checkpoints", [])
        return web.json_response(await asyncio.get_running_loop().run_in_executor(None, warm, names))

    setattr(server, _ROUTE_FLAG, True)
    return True


def _register_with_comfyui() -> None:
    try:
        from server import PromptServer
    except ImportError:  # imported outside ComfyUI (tests, tooling)
        return
    register(PromptServer.instance)


_register_with_comfyui()
