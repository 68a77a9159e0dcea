"""ComfyUI custom node: `POST /cuda/set_device` puts a snapshot-restored ComfyUI back on the GPU.

The prestartup script kept ComfyUI CUDA-free while Modal took the memory snapshot; on restore the
worker calls this route once, before any job. Loading this module twice registers the route once.
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


def register(server: object) -> bool:
    """Add the route to a PromptServer once; False if it was already added."""
    if getattr(server, _ROUTE_FLAG, False):
        return False
    from aiohttp import web

    @server.routes.post("/cuda/set_device")
    async def _cuda_set_device(request: web.Request) -> web.Response:
        return web.json_response(set_device())

    setattr(server, _ROUTE_FLAG, True)
    return True


def _register_with_comfyui() -> None:
    try:
        from server import PromptServer
    except ImportError:  # imported outside ComfyUI (tests, tooling)
        return
    register(PromptServer.instance)


_register_with_comfyui()
