"""Named, typed inputs of a workflow template: which node inputs they set, their JSON Schema (type, default,
bounds, choices from the catalogue), checking submitted values, and turning them into overrides.

Inputs are declared (`{"prompt": {"node": "6", "input": "text"}}`, or `{"targets": [...]}` for several node
inputs), or taken from node titles: a `$name` token in a title exposes the input called `name`, or else the
node's only value input; `$name=input` names it. On a UI PrimitiveNode, `$name` exposes everything it feeds.
Node ids are those of the API-format workflow (for nodes inside subgraphs: `instance:inner`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from comfy_saas.errors import InvalidInput
from comfy_saas.workflows import catalogue

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TITLE_TOKEN = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]{0,63})(?:=([A-Za-z0-9_.]+))?")
Target = tuple[str, str]  # (node id, input name)


@dataclass
class TemplateInput:
    """One named input: the node inputs it sets and the catalogue entry that types it."""

    name: str
    targets: list[Target]
    class_type: str
    entry: dict[str, Any]
    default: Any = None
    description: str | None = None
    media: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return catalogue.kind(self.entry)

    @property
    def seed(self) -> bool:
        return catalogue.is_seed(self.targets[0][1], self.entry)


# --- declaring -------------------------------------------------------------------------------------------


def _target(raw: Any, where: str) -> Target:
    if not isinstance(raw, dict) or not isinstance(raw.get("node"), str | int) or not isinstance(raw.get("input"), str):
        raise InvalidInput(f"{where}: give {{\"node\": ID, \"input\": NAME}}", field=where)
    return str(raw["node"]), raw["input"]


def declared(raw: Any) -> dict[str, dict[str, Any]]:
    """The `inputs` of a template as stored: {name: {"targets": [[node, input], ...], "description"?}}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("inputs: give an object {name: {node, input}}", field="inputs")
    out = {}
    for name, spec in raw.items():
        where = f"inputs.{name}"
        if not NAME.match(name):
            raise InvalidInput(f"{where}: names are letters, digits and _ (not starting with a digit)", field=where)
        many = spec.get("targets") if isinstance(spec, dict) and "targets" in spec else None
        if many is not None and (not isinstance(many, list) or not many):
            raise InvalidInput(f"{where}.targets: give a non-empty list of {{node, input}}", field=where)
        targets = [_target(t, f"{where}.targets[{i}]") for i, t in enumerate(many)] if many else [_target(spec, where)]
        described = spec.get("description") if isinstance(spec.get("description"), str) else None
        out[name] = {"targets": [list(t) for t in targets], **({"description": described[:500]} if described else {})}
    return out


def from_titles(prompt: dict[str, Any], primitives: dict[str, dict[str, Any]], nodes: dict[str, Any]
                ) -> dict[str, dict[str, Any]]:
    """Inputs named by `$name` / `$name=input` tokens in node titles (API `_meta.title`, UI PrimitiveNodes)."""
    found: dict[str, list[list[str]]] = {}
    for node_id, node in prompt.items():
        title = str((node.get("_meta") or {}).get("title") or "")
        for name, input_name in TITLE_TOKEN.findall(title):
            target = input_name or _only_value_input(node_id, node, name, nodes)
            found.setdefault(name, []).append([node_id, target])
    for primitive in primitives.values():
        for name, _ in TITLE_TOKEN.findall(str(primitive.get("title") or "")):
            found.setdefault(name, []).extend([list(t) for t in primitive["targets"]])
    return {name: {"targets": targets} for name, targets in found.items()}


def _only_value_input(node_id: str, node: dict[str, Any], name: str, nodes: dict[str, Any]) -> str:
    inputs = node.get("inputs") or {}
    if name in inputs:
        return name
    specs = catalogue.inputs_of(nodes.get(node.get("class_type")) or {})
    values = [k for k, v in inputs.items() if not _is_link(v) and catalogue.kind(specs.get(k) or {}) in
              catalogue.WIDGET_TYPES]
    if len(values) != 1:
        raise InvalidInput(f"workflow: node {node_id} title has ${name} but the node has no input {name!r} and "
                           f"{len(values)} value inputs; write ${name}=INPUT (one of: {', '.join(values)})",
                           field="workflow")
    return values[0]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


# --- typing against the workflow and the catalogue -------------------------------------------------------


def resolve(spec: dict[str, dict[str, Any]], prompt: dict[str, Any], nodes: dict[str, Any]
            ) -> dict[str, TemplateInput]:
    """Each input typed by the catalogue entry of its first target; 422 naming an input whose target is not a
    value input of the workflow, or whose targets differ in type."""
    out = {}
    for name, item in spec.items():
        typed = [_typed(name, node, inp, prompt, nodes) for node, inp in item["targets"]]
        class_type, entry, value = typed[0]
        if any(catalogue.kind(t[1]) != catalogue.kind(entry) for t in typed):
            raise InvalidInput(f"inputs.{name}: its targets have different types", field=f"inputs.{name}")
        default = value if value is not None and not _is_link(value) else entry.get("default")
        out[name] = TemplateInput(name, [tuple(t) for t in item["targets"]], class_type, entry, default,
                                  item.get("description") or entry.get("tooltip"), media=bool(entry.get("upload")))
    return out


def _typed(name: str, node_id: str, input_name: str, prompt: dict[str, Any], nodes: dict[str, Any]
           ) -> tuple[str, dict[str, Any], Any]:
    where = f"inputs.{name}"
    node = prompt.get(node_id)
    if node is None:
        raise InvalidInput(f"{where}: the workflow has no node {node_id!r}", field=where)
    class_type = node.get("class_type")
    entry = catalogue.inputs_of(nodes.get(class_type) or {}).get(input_name)
    if entry is None:
        raise InvalidInput(f"{where}: node {node_id} ({class_type}) has no input {input_name!r}", field=where)
    if catalogue.kind(entry) not in catalogue.WIDGET_TYPES:
        raise InvalidInput(f"{where}: node {node_id} ({class_type}) input {input_name!r} takes a "
                           f"{catalogue.kind(entry)} link, not a value", field=where)
    return class_type, entry, (node.get("inputs") or {}).get(input_name)


# --- JSON Schema -----------------------------------------------------------------------------------------


def json_schema(title: str, inputs: dict[str, TemplateInput]) -> dict[str, Any]:
    """A JSON Schema (2020-12) of the inputs object a job from the template takes."""
    props = {name: _property(i) for name, i in inputs.items()}
    required = [name for name, i in inputs.items() if i.default is None]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, "type": "object",
            "properties": props, "additionalProperties": False, **({"required": required} if required else {})}


def _property(i: TemplateInput) -> dict[str, Any]:
    prop = _value_schema(i)
    if i.seed:
        prop = {"anyOf": [prop, {"enum": [-1, "random"]}], "x-seed": True}
    if i.default is not None:
        prop["default"] = i.default
    if i.description:
        prop["description"] = i.description
    prop["x-targets"] = [f"{node}.{name}" for node, name in i.targets]
    return prop


def _value_schema(i: TemplateInput) -> dict[str, Any]:
    e = i.entry
    if i.media:
        return {"type": "string", "x-media": str(e.get("upload")),
                "description": "a media file: an http(s) URL, a data: URL, or the name of an item in `media`"}
    if i.kind == "COMBO":
        return {"type": "string", "enum": list(e.get("choices") or [])}
    base = {"INT": {"type": "integer"}, "FLOAT": {"type": "number"}, "BOOLEAN": {"type": "boolean"}}.get(
        i.kind, {"type": "string"})
    bounds = {"minimum": e.get("min"), "maximum": e.get("max"), "x-step": e.get("step")}
    return {**base, **{k: v for k, v in bounds.items() if v is not None and i.kind in ("INT", "FLOAT")}}
