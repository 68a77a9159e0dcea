"""Pre-flight validation at submit, before any GPU is asked for, against a capture of ComfyUI's /object_info.

The capture is made by a worker from its ComfyUI (so it matches the deployed image: node classes,
inputs, installed model files) and kept in the store. Without a capture, submissions pass through and
ComfyUI validates as before. Problems are reported in ComfyUI's own vocabulary.
"""

from __future__ import annotations

from typing import Any

from comfy_saas.workflows import catalogue

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".pt2")


def compact(object_info: dict[str, Any]) -> dict[str, Any]:
    """What validation, UI-format conversion and template inputs need from /object_info (see catalogue.py):
    per class, inputs with their type or choices, bounds and flags, and output types. Small enough to keep
    in one Dict value."""
    return {name: catalogue.compact_class(name, info) for name, info in object_info.items() if isinstance(info, dict)}


def _problem(node_id: str, class_type: str | None, kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"node_id": node_id, "class_type": class_type, "type": kind, "message": message, "details": details}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def validate(workflow: dict[str, Any], schema: dict[str, Any], present: frozenset[str] | set[str] = frozenset()
             ) -> list[dict[str, Any]]:
    """Every problem ComfyUI would refuse the prompt for that can be seen without running it. `present` are
    model file names the job brings itself (they will be installed before it runs)."""
    problems = []
    for node_id, node in workflow.items():
        cls = node.get("class_type")
        spec = schema.get(cls)
        if spec is None:
            problems.append(_problem(node_id, cls, "invalid_prompt",
                                     f"Cannot execute because node {cls} does not exist.", f"Node ID '#{node_id}'"))
            continue
        problems += _check_inputs(workflow, schema, node_id, cls, node.get("inputs") or {}, spec, present)
    return problems


def _check_inputs(workflow: dict, schema: dict, node_id: str, cls: str, inputs: dict, spec: dict,
                  present: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    problems = []
    for field in spec["required"]:
        if field not in inputs:
            problems.append(_problem(node_id, cls, "required_input_missing", "Required input is missing", field))
    for field, value in inputs.items():
        want = spec["required"].get(field) or spec["optional"].get(field)
        if want is None:
            continue  # extra inputs are ignored by ComfyUI too
        if _is_link(value):
            problems += _check_link(workflow, schema, node_id, cls, field, value, want)
        elif isinstance(value, list) and len(value) != 2:  # ComfyUI takes every list for a link
            problems.append(_problem(node_id, cls, "bad_linked_input",
                                     "Bad linked input, must be a length-2 list of [node_id, slot_index]", field))
        elif (bound := _out_of_bounds(field, value, want)) is not None:
            problems.append(_problem(node_id, cls, *bound))
        elif "choices" in want and isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS) \
                and value not in want["choices"] and value not in present:
            shown = ", ".join(want["choices"][:10]) or "none installed"
            problems.append(_problem(node_id, cls, "value_not_in_list", "Value not in list",
                                     f"{field}: '{value}' not in [{shown}]"))
    return problems


def _out_of_bounds(field: str, value: Any, want: dict) -> tuple[str, str, str] | None:
    """(type, message, details) as ComfyUI words them when a number lies outside its input's min/max."""
    if want.get("type") not in ("INT", "FLOAT") or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    low, high = want.get("min"), want.get("max")
    if isinstance(low, int | float) and value < low:
        return "value_smaller_than_min", f"Value {value} smaller than min of {low}", field
    if isinstance(high, int | float) and value > high:
        return "value_bigger_than_max", f"Value {value} bigger than max of {high}", field
    return None


def _check_link(workflow: dict, schema: dict, node_id: str, cls: str, field: str, link: list, want: dict
                ) -> list[dict]:
    source_id, index = link
    source = workflow.get(source_id)
    if source is None:
        return [_problem(node_id, cls, "bad_linked_input", f"Linked node #{source_id} does not exist",
                         f"{field}: [{source_id!r}, {index}]")]
    outputs = (schema.get(source.get("class_type")) or {}).get("outputs")
    if outputs is None:
        return []  # the source's own problem is reported on it
    if not 0 <= index < len(outputs):
        return [_problem(node_id, cls, "bad_linked_input",
                         f"Node #{source_id} ({source.get('class_type')}) has no output {index}",
                         f"{field}: it has {len(outputs)} output(s)")]
    got, expected = outputs[index], want.get("type")
    if expected and expected not in {"*", got} and got != "*" and "," not in expected:
        return [_problem(node_id, cls, "return_type_mismatch", "Return type mismatch between linked nodes",
                         f"{field}, received_type({got}) mismatch input_type({expected})")]
    return []
