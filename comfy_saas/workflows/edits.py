"""Pure edits of an API-format workflow before it is queued: node-field overrides and media names."""

from __future__ import annotations

import copy
from typing import Any

from comfy_saas.errors import InvalidInput


def copy_graph(value: Any) -> Any:
    """A deep copy of a workflow (JSON data: dicts, lists, scalars), several times quicker than copy.deepcopy,
    which keeps a memo of every object for the cycles and shared parts JSON cannot have."""
    if isinstance(value, dict):
        return {k: copy_graph(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_graph(v) for v in value]
    if isinstance(value, str | int | float | bool | None):
        return value
    return copy.deepcopy(value)


def apply_overrides(workflow: dict[str, Any], overrides: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of workflow with workflow[node].inputs[input] = value for each override."""
    out = copy_graph(workflow)
    for i, o in enumerate(overrides):
        node = out.get(o["node"])
        if node is None:
            raise InvalidInput(f"overrides[{i}].node: no node {o['node']!r} in the workflow", field=f"overrides[{i}]")
        node.setdefault("inputs", {})[o["input"]] = o["value"]
    return out


def rewrite_media(workflow: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Point every input that names a submitted media file at the name ComfyUI stored it under."""
    out = copy_graph(workflow)
    for node in out.values():
        inputs = node.get("inputs", {})
        for key, value in inputs.items():
            if isinstance(value, str):
                base = value.removesuffix(" [input]")
                if base in names:
                    inputs[key] = names[base]
    return out
