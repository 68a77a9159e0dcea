"""Turning ComfyUI's event stream for one prompt into a Progress snapshot (pure; the clock is injected)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from comfy_saas.jobs.model import Progress
from comfy_saas.runner.comfy_client import Event


class ProgressTracker:
    """Counts nodes done (cached ones included), the current node and its step, and an ETA from step pace."""

    def __init__(self, workflow: dict[str, Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.classes = {nid: node.get("class_type") for nid, node in workflow.items()}
        self.total = max(1, len(workflow))
        self.done: set[str] = set()
        self.current: str | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self._clock = clock
        self._first_step: tuple[float, int] | None = None
        self._last_step: tuple[float, int] | None = None
        self.cached: set[str] = set()
        self.node_ms: dict[str, float] = {}
        self._node_started: float | None = None

    def apply(self, event: Event) -> bool:
        """Fold one event in; True when the snapshot changed."""
        before = self.snapshot()
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event.data)
        return self.snapshot() != before

    def _on_execution_cached(self, data: dict) -> None:
        self.cached.update(n for n in data.get("nodes", []) if n in self.classes)
        self.done.update(self.cached)

    def _on_executing(self, data: dict) -> None:
        node = data.get("node")
        if node == self.current:
            return
        self._close_node()
        if self.current is not None:
            self.done.add(self.current)
        self.step = self.steps = None
        self._first_step = self._last_step = None
        self.current = node
        self._node_started = self._clock() if node is not None else None

    def _close_node(self) -> None:
        if self.current is not None and self._node_started is not None:
            self.node_ms[self.current] = round((self._clock() - self._node_started) * 1000, 1)
        self._node_started = None

    def _on_progress(self, data: dict) -> None:
        self.current = data.get("node", self.current)
        self.step, self.steps = int(data.get("value", 0)), int(data.get("max", 0)) or None
        now = self._clock()
        if self._first_step is None:
            self._first_step = (now, self.step)
        self._last_step = (now, self.step)

    def _on_executed(self, data: dict) -> None:
        if data.get("node") in self.classes:
            self.done.add(data["node"])

    def _on_execution_success(self, data: dict) -> None:
        self._close_node()
        self.done.update(self.classes)
        self.current = None

    def node_timings(self) -> dict[str, dict[str, float | bool]]:
        """Milliseconds per executed node, and cached nodes at zero."""
        timings: dict[str, dict[str, float | bool]] = {n: {"ms": 0.0, "cached": True} for n in self.cached}
        timings.update({n: {"ms": t, "cached": False} for n, t in self.node_ms.items()})
        return timings

    def eta_s(self) -> float | None:
        """Seconds left in the current node from its step pace; None until two steps were seen."""
        if not (self._first_step and self._last_step and self.steps and self.step is not None):
            return None
        (t0, s0), (t1, s1) = self._first_step, self._last_step
        if s1 <= s0:
            return None
        return round((t1 - t0) / (s1 - s0) * (self.steps - self.step), 2)

    def snapshot(self) -> Progress:
        fraction = 0.0
        if self.current is not None and self.current not in self.done and self.step and self.steps:
            fraction = min(1.0, self.step / self.steps)
        percent = min(100.0, (len(self.done) + fraction) / self.total * 100)
        return Progress(percent=round(percent, 1), node_id=self.current, node_class=self.classes.get(self.current),
                        step=self.step, steps=self.steps, nodes_done=len(self.done), nodes_total=self.total,
                        eta_s=self.eta_s())
