"""Keeping each job's files its own. ComfyUI reads and writes files by the names a workflow gives, shares
its input/output folders between every prompt, and resolves `name [output]` / `name [temp]` into the
other folders without any traversal check (see ComfyUI's folder_paths). So:

- at submit, `check` refuses what could reach another job's files: a path or an `[output]`/`[temp]`
  annotation in a file input, a link into one, and a save prefix that is absolute or climbs out;
- at run time, `isolate` moves the job into its own subfolder: every `filename_prefix` becomes
  `<tag>/<prefix>` (media are uploaded into `input/<tag>/` by the worker), and the worker deletes both
  folders once the outputs are uploaded.
"""

from __future__ import annotations

from typing import Any

from comfy_saas.errors import InvalidInput
from comfy_saas.inputs import shown
from comfy_saas.workflows.edits import copy_graph

# Nodes that open a file named by one of their inputs through folder_paths' annotated-path functions.
FILE_INPUTS: dict[str, tuple[str, ...]] = {
    "LoadImage": ("image",), "LoadImageMask": ("image",), "LoadImageOutput": ("image",),
    "WebcamCapture": ("image",), "LoadLatent": ("latent",), "LoadAudio": ("audio",), "LoadVideo": ("file",),
    "LoadImageSetNode": ("images",), "Load3D": ("model_file",), "Load3DAnimation": ("model_file",),
    "VHS_LoadVideo": ("video",), "VHS_LoadAudioUpload": ("audio",),
}
PREFIX_INPUT = "filename_prefix"
# ComfyUI reads any name ending in these from the output/temp folder, whichever node takes it.
FOREIGN_FOLDERS = ("[output]", "[temp]")
_MAX_PREFIX = 255


def _refuse(node_id: str, node: dict[str, Any], name: str, why: str) -> InvalidInput:
    return InvalidInput(f"workflow: node {shown(node_id)} ({shown(node.get('class_type'))}) input "
                        f"{shown(name)}: {why}", field=f"workflow.{node_id}.inputs.{name}")


def file_name_problem(value: Any) -> str | None:
    """Why `value` cannot name a file input (None when it can): a plain name, optionally ` [input]`."""
    if not isinstance(value, str):
        return "must be a file name (a string); links and other values cannot name a file"
    name = value.removesuffix(" [input]")
    if not name or name != name.strip():
        return "must be a non-empty file name without surrounding spaces"
    if name.rstrip().endswith(FOREIGN_FOLDERS):
        return "an [output] or [temp] annotation would read another job's files; only [input] is allowed"
    if "/" in name or "\\" in name or ".." in name or "\0" in name or name.startswith("~"):
        return "must be a plain file name: no '/', '\\', '..' or absolute paths"
    if any(ord(c) < 32 for c in name):
        return "must not contain control characters"
    return None


def prefix_problem(value: Any) -> str | None:
    """Why `value` cannot be a save prefix (None when it can): a relative path that stays where it is put."""
    if not isinstance(value, str):
        return "must be a string; a linked prefix could write outside the job's folder"
    if len(value) > _MAX_PREFIX:
        return f"is longer than {_MAX_PREFIX} characters"
    if value.startswith(("/", "~")) or "\\" in value or "\0" in value or any(ord(c) < 32 for c in value):
        return "must be a relative path (no leading '/', no '\\' or control characters)"
    if any(part in {".", ".."} for part in value.split("/")):
        return "must not contain '.' or '..' path segments"
    return None


def check(workflow: dict[str, Any]) -> None:
    """Refuse, before anything runs, every input that could read or write outside the job's own files;
    InvalidInput naming the node and the input."""
    for node_id, node in workflow.items():
        inputs = node.get("inputs") or {}
        for name in FILE_INPUTS.get(node.get("class_type"), ()):
            if name in inputs and (why := file_name_problem(inputs[name])) is not None:
                raise _refuse(node_id, node, name, why)
        if PREFIX_INPUT in inputs and (why := prefix_problem(inputs[PREFIX_INPUT])) is not None:
            raise _refuse(node_id, node, PREFIX_INPUT, why)
        for name, value in inputs.items():
            if isinstance(value, str) and value.rstrip().endswith(FOREIGN_FOLDERS):
                raise _refuse(node_id, node, name, "an [output] or [temp] annotation would read another "
                                                   "job's files; only [input] is allowed")


def saving_nodes(workflow: dict[str, Any]) -> list[str]:
    """The ids of the nodes that save files (they have a save prefix), in workflow order."""
    return [node_id for node_id, node in workflow.items()
            if isinstance(node, dict) and isinstance((node.get("inputs") or {}).get(PREFIX_INPUT), str)]


def isolate(workflow: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy whose save prefixes all write under `<tag>/` in ComfyUI's output folder."""
    out = copy_graph(workflow)
    for node in out.values():
        inputs = node.get("inputs") or {}
        prefix = inputs.get(PREFIX_INPUT)
        if isinstance(prefix, str):
            # A trailing slash would be dropped by ComfyUI's normpath, putting the file beside the folder.
            inputs[PREFIX_INPUT] = f"{tag}/{prefix.strip('/') or 'ComfyUI'}"
    return out
