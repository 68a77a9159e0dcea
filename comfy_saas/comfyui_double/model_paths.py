"""Model folders the way ComfyUI 0.3.64's folder_paths keeps them: extra_model_paths.yaml files name folder
trees, loaders list every file with a model extension under them (subfolders and symlinks followed, sorted,
relative names), and loading takes the first root that has the file.

Listing rescans on every call, which is what ComfyUI's mtime-checked cache amounts to: a file added to a
folder shows up in the next /object_info without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}


def parse_config(path: Path) -> list[tuple[str, Path, bool]]:
    """(folder, path, is_default) for every folder an extra_model_paths.yaml names. Only the YAML this format
    uses is read: sections of `key: value` lines, values optionally quoted, `key: |` blocks of several paths."""
    sections: dict[str, dict[str, str]] = {}
    current, block = None, None
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw.startswith(" "):
            current, block = sections.setdefault(raw.split(":", 1)[0].strip(), {}), None
        elif block is not None and raw.startswith("    ") and current is not None:
            current[block] += raw.strip() + "\n"
        elif current is not None:
            key, _, value = raw.strip().partition(":")
            value = value.strip().strip("'\"")
            block = key if value == "|" else None
            current[key] = "" if value == "|" else value
    return [entry for conf in sections.values() for entry in _entries(conf, path.parent)]


def _entries(conf: dict[str, str], yaml_dir: Path) -> list[tuple[str, Path, bool]]:
    base = conf.pop("base_path", None)
    is_default = conf.pop("is_default", "false").lower() == "true"
    if base is not None:
        base = Path(os.path.expandvars(os.path.expanduser(base)))
        base = base if base.is_absolute() else (yaml_dir / base).resolve()
    out = []
    for folder, value in conf.items():
        for line in filter(None, value.split("\n")):
            out.append((_LEGACY.get(folder, folder), (base or yaml_dir) / line, is_default))
    return out


def add(paths: dict[str, list[Path]], folder: str, path: Path, is_default: bool) -> None:
    """folder_paths.add_model_folder_path: a default path goes first."""
    roots = paths.setdefault(_LEGACY.get(folder, folder), [])
    if path in roots:
        roots.remove(path)
    if is_default:
        roots.insert(0, path)
    else:
        roots.append(path)


def list_models(paths: dict[str, list[Path]], folder: str) -> list[str]:
    """Every model file under the folder's roots, as the name a loader takes."""
    found: set[str] = set()
    for root in paths.get(_LEGACY.get(folder, folder), []):
        if not root.is_dir():
            continue
        for dirpath, _subdirs, files in os.walk(root, followlinks=True):
            for name in files:
                if os.path.splitext(name)[1].lower() in EXTENSIONS:
                    found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def full_path(paths: dict[str, list[Path]], folder: str, name: str) -> Path:
    """The first root holding the file; FileNotFoundError with ComfyUI's message otherwise."""
    relative = os.path.relpath(os.path.join("/", name), "/")  # no way out of the root
    for root in paths.get(_LEGACY.get(folder, folder), []):
        if (root / relative).is_file():
            return root / relative
    raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")
