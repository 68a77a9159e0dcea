"""ComfyUI 0.3.64's folder_paths rules, as the double needs them: annotated names, the save-path check, and
the checks /view and /upload/image make. Each function follows the ComfyUI function of the same name
(folder_paths.py, server.py); differences from ComfyUI would make the double accept what ComfyUI refuses.
"""

from __future__ import annotations

import os
from pathlib import Path

ANNOTATIONS = {"[output]": "output", "[input]": "input", "[temp]": "temp"}


def annotated_filepath(name: str, dirs: dict[str, Path]) -> tuple[str, Path | None]:
    """`x.png [output]` -> ("x.png", output dir). Like ComfyUI, only the suffix counts and one character
    more than the tag is cut (it expects exactly one space before the bracket)."""
    for tag, kind in ANNOTATIONS.items():
        if name.endswith(tag):
            return name[: -len(tag) - 1], dirs[kind]
    return name, None


def get_annotated_filepath(name: str, dirs: dict[str, Path], default_dir: Path | None = None) -> str:
    """Where a node reads `name` from: its annotation's folder, else default_dir, else input. No traversal
    check, exactly as in ComfyUI (the gateway refuses paths before a prompt gets here)."""
    name, base = annotated_filepath(name, dirs)
    base = base or default_dir or dirs["input"]
    return os.path.join(os.path.abspath(base), name)


def exists_annotated_filepath(name: str, dirs: dict[str, Path]) -> bool:
    return os.path.exists(get_annotated_filepath(name, dirs))


def get_save_image_path(prefix: str, output_dir: Path) -> tuple[str, str, int, str]:
    """(full_output_folder, filename, counter, subfolder) for a save prefix, refusing a folder outside
    output_dir the way ComfyUI does: at execution time, with its message."""
    output_dir_s = os.path.abspath(output_dir)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    full_output_folder = os.path.join(output_dir_s, subfolder)
    common = os.path.commonpath((output_dir_s, os.path.abspath(full_output_folder)))
    if common != output_dir_s:
        # ComfyUI's own type and text, which clients see in the execution_error
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir_s}"
            f"\n         commonpath: {common}")
    counter = _next_counter(full_output_folder, filename)
    os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder


def _next_counter(folder: str, filename: str) -> int:
    """One more than the highest `{filename}_NNNNN_` in the folder (1 for a new folder)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    found = []
    for name in names:
        stem = name[: len(filename) + 1]
        digits = name[len(filename) + 1: len(filename) + 6]
        if stem == filename + "_" and digits.isdigit():
            found.append(int(digits))
    return max(found, default=0) + 1


def view_path(query: dict[str, str], dirs: dict[str, Path]) -> tuple[int, str | None]:
    """GET /view's checks in ComfyUI's order: (status, file path). 404 without a filename, 400 for an empty
    or unsafe name or an unknown type, 403 for a subfolder outside the folder, 404 for no such file."""
    if "filename" not in query:
        return 404, None
    filename, output_dir = annotated_filepath(query["filename"], dirs)
    if not filename:
        return 400, None
    if filename[0] == "/" or ".." in filename:
        return 400, None
    if output_dir is None:
        kind = query.get("type", "output")
        if kind not in ("output", "input", "temp"):
            return 400, None
        output_dir = dirs[kind]
    base = os.path.abspath(output_dir)
    if "subfolder" in query:
        full = os.path.join(base, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), base)) != base:
            return 403, None
        base = full
    path = os.path.join(base, os.path.basename(filename))
    return (200, path) if os.path.isfile(path) else (404, None)


def upload_path(upload_dir: Path, subfolder: str, filename: str) -> tuple[str, str] | None:
    """POST /upload/image's check: (folder to create, file path), or None (HTTP 400) when the subfolder or
    the name would put the file outside upload_dir. Like ComfyUI, only the subfolder is created, so a name
    with a `/` in it fails later."""
    upload_dir_s = os.path.abspath(upload_dir)
    full_output_folder = os.path.join(upload_dir_s, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_output_folder, filename))
    if os.path.commonpath((upload_dir_s, filepath)) != upload_dir_s:
        return None
    return full_output_folder, filepath
