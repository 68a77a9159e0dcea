"""Following a UI graph's links to what really feeds an input, the way the frontend's ExecutableNodeDTO does:
through Reroutes, bypassed nodes (to their matching-type input), PrimitiveNodes (their value) and subgraph
boundaries (by slot name; an instance's promoted widget value when its input is not linked)."""

from __future__ import annotations

from typing import Any, NamedTuple

from comfy_saas.workflows import catalogue
from comfy_saas.workflows.ui_graph import (
    BYPASSED,
    MUTED,
    PRIMITIVE,
    REROUTE,
    SUBGRAPH_INPUT,
    VIRTUAL,
    Graph,
    GraphError,
    Scope,
    mode,
    node_inputs,
    node_outputs,
)


class Resolved(NamedTuple):
    """What an input link leads to: a link to an emitted node's output, or a value (from a primitive/host)."""

    link: tuple[str, int] | None = None
    value: Any = None
    primitive: str | None = None  # the exec id of the PrimitiveNode that gave the value


def problem(node_id: str, class_type: Any, kind: str, message: str) -> dict[str, Any]:
    return {"node_id": node_id, "class_type": class_type, "type": kind, "message": message}


class Links:
    """Link resolution over one workflow's subgraph definitions; collects what it notices on the way."""

    def __init__(self, nodes: dict[str, Any], defs: dict[str, dict[str, Any]]) -> None:
        self.catalogue, self.defs = nodes, defs
        self.graphs = {def_id: Graph.parse(d) for def_id, d in defs.items()}
        self.warnings: list[str] = []
        self.primitives: dict[str, dict[str, Any]] = {}  # exec id -> {title, targets}
        self.outdated: list[dict[str, Any]] = []  # links from outputs this deployment's node lacks

    def child(self, scope: Scope, instance: dict[str, Any]) -> Scope:
        """The scope a subgraph instance opens."""
        return Scope(self.graphs[instance["type"]], (*scope.path, str(instance["id"])), instance, scope,
                     self.defs[instance["type"]])


    def resolve_input(self, scope: Scope, inp: dict[str, Any], seen: frozenset) -> Resolved | None:
        """Where the link into `inp` really comes from, through reroutes, bypasses and subgraph boundaries."""
        link = scope.graph.links.get(str(inp.get("link")))
        if link is None:
            return None
        if link.origin == SUBGRAPH_INPUT:
            return self._boundary_input(scope, link.origin_slot, seen)
        origin = scope.graph.nodes.get(link.origin)
        if origin is None:
            self.warnings.append(f"link {inp.get('link')} starts at a node that does not exist")
            return None
        return self.resolve_output(scope, origin, link.origin_slot, inp.get("type"), seen)

    def resolve_output(self, scope: Scope, node: dict[str, Any], slot: int, want: Any, seen: frozenset
                       ) -> Resolved | None:
        """What output `slot` of `node` provides to a consumer input of type `want`."""
        key = (scope.path, str(node["id"]), slot)
        if key in seen:
            raise GraphError(f"node {scope.exec_id(node['id'])}: links form a cycle")
        seen = seen | {key}
        kind = node.get("type")
        if kind == PRIMITIVE:  # its value is applied whatever its mode
            return self._primitive(scope, node)
        if mode(node) == BYPASSED:
            index = bypass_input(node, slot, want)
            return None if index is None else self.resolve_input(scope, node_inputs(node)[index], seen)
        if isinstance(kind, str) and kind in self.defs:
            if mode(node) == MUTED:  # a link to the instance itself, which is never sent: removed at the end
                return Resolved(link=(scope.exec_id(node["id"]), slot))
            return self._subgraph_output(scope, node, slot, want, seen)
        if kind == REROUTE:
            ins = node_inputs(node)
            return self.resolve_input(scope, ins[0], seen) if ins else None
        if kind in VIRTUAL:
            return None
        self._check_output(scope, node, slot)
        return Resolved(link=(scope.exec_id(node["id"]), slot))  # muted nodes too: removed at the end

    def _check_output(self, scope: Scope, node: dict[str, Any], slot: int) -> None:
        """A link from an output this deployment's version of the node does not have (saved with a newer one)."""
        outputs = (self.catalogue.get(node.get("type")) or {}).get("outputs")
        if outputs is None or slot < len(outputs) or mode(node) == MUTED:
            return
        saved = node_outputs(node)
        name = saved[slot].get("name") if slot < len(saved) else None
        self.outdated.append(problem(scope.exec_id(node["id"]), node.get("type"), "outdated_node_type",
                                      f"has no output {slot} ({name!r}) on this deployment, which has an older "
                                      f"version of this node type"))

    def _primitive(self, scope: Scope, node: dict[str, Any]) -> Resolved | None:
        named = node.get("widgets_values_named") or {}
        saved = node.get("widgets_values")
        if isinstance(named, dict) and "value" in named:
            value = named["value"]
        elif isinstance(saved, list) and saved:
            value = saved[0]
        else:
            return None
        exec_id = scope.exec_id(node["id"])
        self.primitives.setdefault(exec_id, {"title": node.get("title"), "targets": []})
        return Resolved(value=value, primitive=exec_id)

    def _subgraph_output(self, scope: Scope, instance: dict[str, Any], slot: int, want: Any, seen: frozenset
                         ) -> Resolved | None:
        inner = self.child(scope, instance)
        outputs = inner.definition.get("outputs") or []
        link_ids = (outputs[slot].get("linkIds") or []) if 0 <= slot < len(outputs) else []
        link = inner.graph.links.get(str(link_ids[0])) if link_ids else None
        if link is None:
            return None  # the output is not connected inside
        if link.origin == SUBGRAPH_INPUT:
            return self._boundary_input(inner, link.origin_slot, seen)
        origin = inner.graph.nodes.get(link.origin)
        return None if origin is None else self.resolve_output(inner, origin, link.origin_slot, want, seen)

    def _boundary_input(self, scope: Scope, k: int, seen: frozenset) -> Resolved | None:
        """A link from subgraph input k: the instance's outer link, else its promoted widget value."""
        sg_inputs = scope.definition.get("inputs") or []
        if scope.instance is None or scope.parent is None or not 0 <= k < len(sg_inputs):
            return None
        name = sg_inputs[k].get("name")
        outer = next((i for i in node_inputs(scope.instance) if i.get("name") == name), None)
        if outer is not None and outer.get("link") is not None:
            return self.resolve_input(scope.parent, outer, seen)
        saved = scope.instance.get("widgets_values")
        slots = self._promoted_slots(scope, saved)
        if isinstance(saved, list) and name in slots and slots.index(name) < len(saved):
            return Resolved(value=saved[slots.index(name)])
        return None  # the inner widget keeps its own value

    def _promoted_slots(self, scope: Scope, saved: Any) -> list[str | None]:
        """The names behind an instance's widgets_values: one per subgraph input that feeds a widget (older
        saves add a control slot after seed-like ones)."""
        plain, with_control = [], []
        for sg_input in scope.definition.get("inputs") or []:
            target = self._widget_target(scope, sg_input)
            if target is None:
                continue
            plain.append(sg_input.get("name"))
            with_control.append(sg_input.get("name"))
            if catalogue.has_control(*target):
                with_control.append(None)
        count = len(saved) if isinstance(saved, list) else 0
        return with_control if count == len(with_control) != len(plain) else plain

    def _widget_target(self, scope: Scope, sg_input: dict[str, Any]) -> tuple[str, dict] | None:
        """(widget name, catalogue entry) of the first widget input a subgraph input feeds, if any."""
        for link_id in sg_input.get("linkIds") or []:
            link = scope.graph.links.get(str(link_id))
            target = scope.graph.nodes.get(link.target) if link else None
            for inp in node_inputs(target or {}):
                if inp.get("link") == link_id and inp.get("widget"):
                    cls = self.catalogue.get(target.get("type")) or {}
                    return inp.get("name"), catalogue.inputs_of(cls).get(inp.get("name")) or {}
        return None


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph's isValidConnection: '*', '' and 0 match anything; comma lists match if any pair does."""
    a = "" if a in ("*", None, 0) else str(a)
    b = "" if b in ("*", None, 0) else str(b)
    if not a or not b or a.lower() == b.lower():
        return True
    return any(x.strip().lower() == y.strip().lower() for x in a.split(",") for y in b.split(","))


def bypass_input(node: dict[str, Any], slot: int, want: Any) -> int | None:
    """Which input a bypassed node passes to output `slot` for a consumer of type `want` (None: no match)."""
    ins, outs = node_inputs(node), node_outputs(node)
    out_type = outs[slot].get("type") if 0 <= slot < len(outs) else None
    if not ins:
        return None
    if want in ("*", "", None, 0):
        return slot if 0 <= slot < len(ins) else 0
    if 0 <= slot < len(ins) and _compatible(ins[slot].get("type"), out_type) \
            and _compatible(ins[slot].get("type"), want):
        return slot
    for i, inp in enumerate(ins):
        if inp.get("type") == want:
            return i
    for i, inp in enumerate(ins):
        if _compatible(inp.get("type"), out_type) and _compatible(inp.get("type"), want):
            return i
    return None
