"""Reading a ComfyUI UI-format (LiteGraph) workflow: nodes and links per graph, subgraph definitions, and the
scopes subgraph instances open when they are flattened.

Both saved versions are read: 0.4 (links as arrays) and 1 (links as objects; subgraph definitions always use
objects). Node ids are compared as strings. Inside a subgraph definition, a link from node -10 starts at the
definition's input slot and a link to node -20 ends at its output slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = "-10", "-20"
MUTED, BYPASSED = 2, 4
# Frontend-only nodes: never sent to ComfyUI.
NOTES = frozenset({"Note", "MarkdownNote"})
PRIMITIVE, REROUTE = "PrimitiveNode", "Reroute"
VIRTUAL = NOTES | {PRIMITIVE, REROUTE}


class GraphError(ValueError):
    """The graph cannot be read or flattened; the message names the node."""


class Link(NamedTuple):
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def count_nodes(workflow: dict[str, Any]) -> int:
    """Nodes in the graph and in every subgraph definition."""
    return len(_listed(workflow.get("nodes"))) + sum(len(_listed(d.get("nodes"))) for d in
                                                     definitions(workflow).values())


def is_ui_format(workflow: Any) -> bool:
    """A saved UI workflow has a `nodes` list and `links` (an API workflow maps node ids to nodes)."""
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def parse_link(raw: Any) -> tuple[str, Link] | None:
    """(link id, Link) from the array form [id, origin, slot, target, slot, type] or the object form."""
    if isinstance(raw, dict):
        parts = [raw.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
    elif isinstance(raw, list) and len(raw) >= 5:
        parts = [*raw[:5], raw[5] if len(raw) > 5 else None]
    else:
        return None
    link_id, origin, origin_slot, target, target_slot, kind = parts
    try:
        return str(link_id), Link(str(origin), int(origin_slot), str(target), int(target_slot), kind)
    except (TypeError, ValueError):
        return None  # a malformed link connects nothing, as in the frontend


@dataclass
class Graph:
    """One graph level: the root workflow or one subgraph definition."""

    nodes: dict[str, dict[str, Any]]
    links: dict[str, Link]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Graph:
        nodes = {}
        for node in _listed(data.get("nodes")):
            if not isinstance(node, dict) or node.get("id") is None:
                raise GraphError(f"a node without an id: {str(node)[:80]}")
            nodes[str(node["id"])] = node
        links = dict(filter(None, (parse_link(raw) for raw in _listed(data.get("links")))))
        return cls(nodes, links)


def definitions(container: dict[str, Any], found: dict[str, dict[str, Any]] | None = None) -> dict[str, dict]:
    """Every subgraph definition by id, nested ones included."""
    found = {} if found is None else found
    defs = container.get("definitions") if isinstance(container, dict) else None
    for sg in _listed(defs.get("subgraphs") if isinstance(defs, dict) else None):
        if isinstance(sg, dict) and isinstance(sg.get("id"), str) and sg["id"] not in found:
            found[sg["id"]] = sg
            definitions(sg, found)
    return found


@dataclass(frozen=True)
class Scope:
    """A graph as executed under a path of subgraph-instance ids (the root has an empty path)."""

    graph: Graph
    path: tuple[str, ...] = ()
    instance: dict[str, Any] | None = None
    parent: Scope | None = None
    definition: dict[str, Any] = field(default_factory=dict)

    def exec_id(self, node_id: Any) -> str:
        """The id ComfyUI sees: instance ids from the root, then the node's, joined by ':'."""
        return ":".join((*self.path, str(node_id)))


def mode(node: dict[str, Any]) -> int:
    value = node.get("mode", 0)
    return value if isinstance(value, int) else 0


def node_inputs(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in _listed(node.get("inputs")) if isinstance(i, dict)]


def node_outputs(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [o if isinstance(o, dict) else {} for o in _listed(node.get("outputs"))]
