"""Hand-made UI-format (LiteGraph 0.4) graphs for the conversion tests, built the way ComfyUI saves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfy_saas.comfyui_double.nodes import NODES
from comfy_saas.workflows import preflight

# The double's catalogue, compacted the way a worker publishes it.
DOUBLE_NODES = preflight.compact({name: spec.schema(Path("/nonexistent")) for name, spec in NODES.items()})


class UI:
    """A graph (or a subgraph definition) under construction."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.extra_links: list[dict[str, Any]] = []  # object-form links (subgraph definitions)

    def add(self, node_id: int, kind: str, widgets: list | None = None, *, mode: int = 0, title: str | None = None,
            ins: tuple = (), outs: tuple = (), widget_ins: tuple = ()) -> dict[str, Any]:
        """A node: `ins` are sockets (name, type), `widget_ins` widgets converted to inputs, `outs` outputs."""
        node = {"id": node_id, "type": kind, "mode": mode, "pos": [0, 0], "size": [100, 50], "flags": {},
                "order": len(self.nodes), "properties": {"Node name for S&R": kind},
                "inputs": [{"name": n, "type": t, "link": None} for n, t in ins]
                + [{"name": n, "type": t, "link": None, "widget": {"name": n}} for n, t in widget_ins],
                "outputs": [{"name": n, "type": t, "links": []} for n, t in outs],
                "widgets_values": widgets if widgets is not None else []}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def node(self, node_id: int) -> dict[str, Any]:
        return next(n for n in self.nodes if n["id"] == node_id)

    def connect(self, origin: int, slot: int, target: int, input_name: str, kind: str = "IMAGE",
                object_form: bool = False) -> int:
        link_id = len(self.links) + len(self.extra_links) + 1
        if origin not in (-10,):
            self.node(origin)["outputs"][slot]["links"].append(link_id)
        if target != -20:
            tgt = self.node(target)
            target_slot = next(i for i, inp in enumerate(tgt["inputs"]) if inp["name"] == input_name)
            tgt["inputs"][target_slot]["link"] = link_id
        else:
            target_slot = int(input_name)
        if object_form:
            self.extra_links.append({"id": link_id, "origin_id": origin, "origin_slot": slot, "target_id": target,
                                     "target_slot": target_slot, "type": kind})
        else:
            self.links.append([link_id, origin, slot, target, target_slot, kind])
        return link_id

    def workflow(self, subgraphs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = {"last_node_id": max((n["id"] for n in self.nodes), default=0), "last_link_id": len(self.links),
               "nodes": self.nodes, "links": self.links, "groups": [{"title": "a group", "bounding": [0, 0, 9, 9]}],
               "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
        if subgraphs:
            out["definitions"] = {"subgraphs": subgraphs}
        return out

    def definition(self, def_id: str, name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
                   ) -> dict[str, Any]:
        """This graph as a subgraph definition; inputs/outputs: {name, type, linkIds}."""
        return {"id": def_id, "version": 1, "name": name, "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]},
                "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]}, "inputs": inputs, "outputs": outputs,
                "widgets": [], "nodes": self.nodes, "links": self.extra_links, "groups": [], "config": {},
                "extra": {}, "state": {}}
