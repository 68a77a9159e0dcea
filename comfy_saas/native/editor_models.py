"""ComfyUI's `/experiment/models` (the editor's model library): the pool's model folders and their files."""

from __future__ import annotations

from typing import Any

from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services


def folders(svc: Services, caller: Caller) -> list[dict[str, Any]]:
    """[{name, folders}] per model folder of the default pool (folders: paths on a worker, which we hide)."""
    return [{"name": name, "folders": []} for name in _folder_names(svc, caller)]


def files(svc: Services, caller: Caller, folder: str) -> list[dict[str, Any]]:
    """[{name, pathIndex}] of the files in one model folder of the default pool."""
    return []


def _folder_names(svc: Services, caller: Caller) -> list[str]:
    return []
