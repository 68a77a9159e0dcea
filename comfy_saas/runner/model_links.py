"""Making cached model files visible to one ComfyUI: flat symlinks named as the job asks, in a model folder
tree that ComfyUI reads first (an extra model path with `is_default: true`).

ComfyUI re-lists a model folder when the folder's mtime changes, so a new link shows up in the next
/object_info and /prompt without a restart. Folders are made once and never deleted (ComfyUI's listing
breaks when a folder it has seen disappears). A name ComfyUI may have loaded keeps its content for good,
because ComfyUI caches node results and loaded LoRAs by name: when another file already holds a name, the
job's file gets an alias that carries its sha256, and the job's workflow is rewritten to use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from comfy_saas.jobs.request import MODEL_EXTENSIONS, MODEL_FOLDERS

CONFIG_SECTION = "comfy_saas_job_models"


class ModelLinks:
    """The job-model folder tree of one ComfyUI. `shadows` are its other model roots: a name already there
    means a different file ComfyUI knows by that name."""

    def __init__(self, root: str | Path, shadows: Iterable[str | Path] = ()) -> None:
        self.root = Path(root)
        self.shadows = [Path(s) for s in shadows]

    def ensure_folders(self) -> None:
        """Create every model folder once (before ComfyUI starts, so it records them from the start)."""
        for folder in MODEL_FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def config(self) -> str:
        """ComfyUI's extra_model_paths.yaml for this tree, searched before ComfyUI's own folders."""
        lines = [f"{CONFIG_SECTION}:", f"  base_path: {json.dumps(str(self.root.resolve()))}", "  is_default: true"]
        return "\n".join(lines + [f"  {folder}: {folder}" for folder in MODEL_FOLDERS]) + "\n"

    def write_config(self, path: str | Path) -> Path:
        """Make the folders and write the config ComfyUI gets as --extra-model-paths-config."""
        self.ensure_folders()
        path = Path(path)
        path.write_text(self.config())
        return path

    def link(self, folder: str, name: str, blob: Path, sha256: str) -> str:
        """Show `blob` to ComfyUI as folder/name, or as an alias when the name holds another file; the name used."""
        blob = blob.absolute()  # a relative target would resolve against the link's own folder
        for candidate in (name, alias(name, sha256, 12), alias(name, sha256, 64)):
            if self._points_to(folder, candidate, blob):
                return candidate
            if self._free(folder, candidate):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
                os.symlink(blob, self.root / folder / candidate)
                return candidate
        raise FileExistsError(f"{folder}/{name}: every name for {sha256} is taken")

    def _points_to(self, folder: str, name: str, blob: Path) -> bool:
        path = self.root / folder / name
        return path.is_symlink() and Path(os.readlink(path)) == blob

    def _free(self, folder: str, name: str) -> bool:
        if os.path.lexists(self.root / folder / name):
            return False
        return not any((shadow / folder / name).exists() for shadow in self.shadows)


def alias(name: str, sha256: str, digits: int) -> str:
    """'style.safetensors' -> 'style.1a2b3c4d5e6f.safetensors': a name that only this content can have."""
    ext = next((e for e in MODEL_EXTENSIONS if name.lower().endswith(e)), Path(name).suffix)
    return f"{name[:len(name) - len(ext)]}.{sha256[:digits]}{ext}"
