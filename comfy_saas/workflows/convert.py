"""UI-format (LiteGraph) workflow -> API-format prompt, following what ComfyUI's frontend does when it queues.

- Widget values map to inputs in the node's widget order (widgets.py), skipping companion slots such as the
  control_after_generate value; a widget input with a link takes the link.
- `PrimitiveNode` values are applied to every target; `Reroute` passes its input through; notes and groups
  are ignored.
- Muted nodes (mode 2) are not sent, and inputs linked to them are removed, so what only they fed does not
  run; bypassed nodes (mode 4) are not sent and their outputs are rewired to the matching-type input.
- Subgraph instances are flattened: inner nodes get ids `instance:inner` (nested: `a:b:inner`), links cross
  the boundary by slot name, and an instance's promoted widget values win over the inner ones.
- Dynamic prompts and save-node filename replacements are applied (prompt_text.py).
A node type the catalogue lacks, or a graph that cannot be converted, raises UnconvertibleWorkflow naming
the nodes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from comfy_saas.errors import UnconvertibleWorkflow
from comfy_saas.workflows import catalogue, prompt_text
from comfy_saas.workflows.links import Links, Resolved, problem
from comfy_saas.workflows.ui_graph import (
    BYPASSED,
    MUTED,
    VIRTUAL,
    Graph,
    GraphError,
    Scope,
    definitions,
    mode,
    node_inputs,
)
from comfy_saas.workflows.widgets import widget_values

MAX_DEPTH = 16  # nested subgraphs; deeper means a definition contains itself


@dataclass
class Conversion:
    """The API-format prompt, what the conversion noticed, and where each PrimitiveNode's value went."""

    prompt: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    primitives: dict[str, dict[str, Any]] = field(default_factory=dict)  # exec id -> {title, targets}


def convert(workflow: dict[str, Any], nodes: dict[str, Any], *, rng: random.Random | None = None,
            now: datetime | None = None, max_nodes: int = 10_000, dynamic_prompts: bool = True) -> Conversion:
    """Convert a UI-format workflow with the catalogue `nodes` (compacted /object_info). Without
    dynamic_prompts, {a|b} groups are left as saved."""
    try:
        rng = (rng or random.Random()) if dynamic_prompts else None  # no generator: {a|b} stays as saved
        return _Converter(workflow, nodes, rng, now or datetime.now(UTC), max_nodes).run()
    except GraphError as exc:
        raise UnconvertibleWorkflow(f"workflow: {exc}", [{"message": str(exc)}]) from None
    except RecursionError:
        raise UnconvertibleWorkflow("workflow: links or subgraphs nest too deeply", []) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a hand-edited or damaged file
        raise UnconvertibleWorkflow(f"workflow: the UI-format graph is malformed ({type(exc).__name__}: {exc})",
                                    []) from None


class _Converter:
    def __init__(self, workflow: dict[str, Any], nodes: dict[str, Any], rng: random.Random | None, now: datetime,
                 max_nodes: int) -> None:
        self.catalogue, self.rng, self.now, self.max_nodes = nodes, rng, now, max_nodes
        self.links = Links(nodes, definitions(workflow))
        self.defs, self.graphs = self.links.defs, self.links.graphs
        self.warnings = self.links.warnings  # one list: what resolving links noticed too
        self.root = Scope(Graph.parse(workflow))

    # --- the whole graph ---------------------------------------------------------------------------

    def run(self) -> Conversion:
        emitted = list(self._executed_nodes())
        self._refuse_unknown(emitted)
        prompt = {scope.exec_id(nid): self._emit(scope, node) for scope, nid, node in emitted}
        if self.links.outdated:
            first, kinds = self.links.outdated[0], sorted({str(p["class_type"]) for p in self.links.outdated})
            raise UnconvertibleWorkflow(f"workflow: saved with newer versions of node type(s) {', '.join(kinds)}: "
                                        f"node {first['node_id']} ({first['class_type']}) {first['message']}",
                                        self.links.outdated)
        self._drop_muted_branches(prompt)
        return Conversion(prompt, self.warnings[:50], self.links.primitives)

    def _drop_muted_branches(self, prompt: dict[str, Any]) -> None:
        """Remove inputs linked to nodes that are not sent (muted ones); a node that so loses a required input
        cannot run and is dropped too, and so on downstream: a muted node takes what only it fed with it."""
        changed = True
        while changed:
            changed = False
            for exec_id, entry in list(prompt.items()):
                lost = [k for k, v in entry["inputs"].items() if _dangling(v, prompt)]
                for name in lost:
                    del entry["inputs"][name]
                required = (self.catalogue.get(entry["class_type"]) or {}).get("required") or {}
                if any(name in required for name in lost):
                    del prompt[exec_id]
                    self.warnings.append(f"node {exec_id} ({entry['class_type']}) is not run: its input "
                                         f"{lost[0]!r} comes from a muted node")
                    changed = True

    def _executed_nodes(self):
        count = 0
        for scope, node in self._walk(self.root, 0):
            if node.get("type") in VIRTUAL or mode(node) in (MUTED, BYPASSED):
                continue
            count += 1
            if count > self.max_nodes:
                raise UnconvertibleWorkflow(f"workflow: flattens to more than {self.max_nodes} nodes", [])
            yield scope, str(node["id"]), node

    def _walk(self, scope: Scope, depth: int):
        if depth > MAX_DEPTH:
            raise GraphError(f"subgraph {scope.exec_id('')[:-1]}: nested more than {MAX_DEPTH} deep (or contains "
                             f"itself)")
        for node in scope.graph.nodes.values():
            kind = node.get("type")
            if isinstance(kind, str) and kind in self.defs:
                if mode(node) not in (MUTED, BYPASSED):  # a muted or bypassed subgraph's contents never run
                    yield from self._walk(self.links.child(scope, node), depth + 1)
            else:
                yield scope, node

    def _refuse_unknown(self, emitted: list) -> None:
        problems = []
        for scope, nid, node in emitted:
            kind = node.get("type")
            if not isinstance(kind, str) or not kind:
                problems.append(problem(scope.exec_id(nid), kind, "invalid_node", "has no type"))
            elif kind.startswith(("workflow>", "workflow/")):
                problems.append(problem(scope.exec_id(nid), kind, "group_node",
                                         "legacy group nodes are not supported; convert the group to a subgraph"))
            elif kind not in self.catalogue:
                problems.append(problem(scope.exec_id(nid), kind, "missing_node_type",
                                         f"node type {kind} is not installed on this deployment"))
        if problems:
            missing = sorted({str(p["class_type"]) for p in problems})
            nodes = ", ".join(p["node_id"] for p in problems[:10])
            raise UnconvertibleWorkflow(f"workflow: node type(s) this deployment does not have: {', '.join(missing)} "
                                        f"(node {nodes})", problems)

    # --- one node ------------------------------------------------------------------------------------

    def _emit(self, scope: Scope, node: dict[str, Any]) -> dict[str, Any]:
        kind, exec_id = node["type"], scope.exec_id(node["id"])
        cls = self.catalogue[kind]
        specs = catalogue.inputs_of(cls)
        values, warnings = widget_values(node, kind, cls)
        self.warnings += warnings
        linked = self._linked_inputs(scope, node, exec_id, specs)
        values = {k: v for k, v in values.items() if k in specs}
        for name, entry in specs.items():
            if catalogue.is_widget(entry) and name not in values and name not in linked:
                self._default(values, name, entry)
        self._refuse_browser_widgets(exec_id, kind, specs, values, linked)
        inputs = {**values, **{k: r.value for k, r in linked.items() if r.link is None}}
        inputs = self._transform(scope, kind, specs, inputs)
        inputs.update({k: list(r.link) for k, r in linked.items() if r.link is not None})
        return {"inputs": inputs, "class_type": kind,
                "_meta": {"title": node.get("title") or catalogue.title_of(kind, cls)}}

    def _linked_inputs(self, scope: Scope, node: dict[str, Any], exec_id: str, specs: dict[str, Any]
                       ) -> dict[str, Resolved]:
        out = {}
        for inp in node_inputs(node):
            name = inp.get("name")
            if inp.get("link") is None or not isinstance(name, str):
                continue
            if name not in specs and name.split(".", 1)[0] not in specs:
                self.warnings.append(f"node {exec_id}: input {name!r} is not in the catalogue; dropped")
                continue
            resolved = self.links.resolve_input(scope, inp, frozenset())
            if resolved is not None:
                out[name] = resolved
                if resolved.primitive:
                    self.links.primitives[resolved.primitive]["targets"].append([exec_id, name])
        return out

    @staticmethod
    def _default(values: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
        """A widget the save has no value for keeps its default, as in the frontend."""
        if "default" in entry:
            values[name] = entry["default"]
        elif entry.get("choices"):
            values[name] = entry["choices"][0]

    @staticmethod
    def _refuse_browser_widgets(exec_id: str, kind: str, specs: dict, values: dict, linked: dict) -> None:
        for name, entry in specs.items():
            if catalogue.kind(entry) in catalogue.BROWSER_TYPES and name not in linked and not entry.get("force"):
                raise UnconvertibleWorkflow(
                    f"workflow: node {exec_id} ({kind}): input {name!r} is computed by the browser when it queues "
                    f"(webcam or 3D view) and cannot be converted on the server",
                    [problem(exec_id, kind, "browser_widget", f"{name} is computed by the browser")])

    def _transform(self, scope: Scope, kind: str, specs: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        if kind in prompt_text.SAVE_NODE_TYPES and isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = prompt_text.replace_in_filename(inputs["filename_prefix"], self._lookup,
                                                                        self.now)
        out = {}
        for name, value in inputs.items():
            if self.rng is not None and isinstance(value, str) and (specs.get(name) or {}).get("dyn"):
                value = prompt_text.dynamic_prompt(value, self.rng)
            out[name] = {"__value__": value} if isinstance(value, list) else value  # a list would read as a link
        return out

    def _lookup(self, ref: str, widget: str) -> Any:
        """%Node.widget%: the first node whose "Node name for S&R", else title, is `ref`."""
        nodes = [n for g in (self.root.graph, *self.graphs.values()) for n in g.nodes.values()]
        match = [n for n in nodes if (n.get("properties") or {}).get("Node name for S&R") == ref] or \
                [n for n in nodes if (n.get("title") or catalogue.title_of(str(n.get("type")),
                                                                           self.catalogue.get(n.get("type")))) == ref]
        if not match or match[0].get("type") not in self.catalogue:
            return None
        return widget_values(match[0], match[0]["type"], self.catalogue[match[0]["type"]])[0].get(widget)

def _dangling(value: Any, prompt: dict[str, Any]) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt
