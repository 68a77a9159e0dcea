"""ComfyUI's `/experiment/models` (the editor's model library): the pool's model folders and the files its
loaders list, in the shapes of ComfyUI's model manager (no paths on a worker, no sizes or dates)."""

from __future__ import annotations

from typing import Any

from comfy_saas.errors import NotFound
from comfy_saas.jobs import operations
from comfy_saas.jobs.services import Services
from comfy_saas.native import catalogue

_HIDDEN = {"configs", "custom_nodes"}  # as ComfyUI's model manager


def folders() -> list[dict[str, Any]]:
    """[{name, folders}] per model folder (folders: paths on a worker, which the editor only shows)."""
    return [{"name": name, "folders": []} for name in catalogue.folders() if name not in _HIDDEN]


def files(svc: Services, pool: str, folder: str) -> list[dict[str, Any]]:
    """[{name, pathIndex}] of one folder's files as the pool's catalogue lists them; NotFound for no folder."""
    if folder not in catalogue.folders():
        raise NotFound(f"no models folder {folder!r}")
    nodes = operations.catalogue(svc, pool, needed=True)
    return [{"name": name, "pathIndex": 0} for name in catalogue.folder_files(nodes, folder)]
