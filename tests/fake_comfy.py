"""A ComfyUI stand-in that completes every prompt at once, in-process: for simulations that run thousands of
jobs through real workers, where the protocol double's HTTP round trips would only add time."""

from __future__ import annotations

import threading
import time
from typing import Any

from comfy_saas.runner.comfy_client import Event

CATALOGUE = {"EmptyImage": {"input": {}, "output": ["IMAGE"]}, "SaveImage": {"input": {}, "output": []}}


class _Events:
    def __init__(self, comfy: InstantComfy, client_id: str) -> None:
        self.comfy, self.client_id, self.reconnects = comfy, client_id, 0

    def open(self) -> None:
        pass

    ensure_open = close = open

    def alive(self, timeout_s: float = 2.0) -> bool:
        return True

    def drop_waiting(self) -> bool:
        return True

    def next(self, timeout_s: float) -> Event | None:
        with self.comfy.lock:
            if self.comfy.finished:
                return Event("execution_success", {"prompt_id": self.comfy.finished.pop(0)})
        time.sleep(min(timeout_s, 0.001))
        return None


class InstantComfy:
    """Accepts any prompt and reports it done with no outputs; `catalogue` is what /object_info shows."""

    def __init__(self, catalogue: dict[str, Any] | None = None) -> None:
        self.catalogue = CATALOGUE if catalogue is None else catalogue
        self.lock = threading.Lock()
        self.finished: list[str] = []
        self.entries: dict[str, Any] = {}

    def events(self, client_id: str | None = None) -> _Events:
        return _Events(self, client_id or "instant")

    def object_info(self) -> dict[str, Any]:
        return self.catalogue

    def healthy(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def answered_within(self, seconds: float) -> bool:
        return True

    def forget_health(self) -> None:
        pass

    def queue_prompt(self, workflow: dict, client_id: str, prompt_id: str,
                     extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.lock:
            self.entries[prompt_id] = {"status": {"completed": True, "status_str": "success", "messages": []},
                                       "outputs": {}}
            self.finished.append(prompt_id)
        return {"prompt_id": prompt_id, "number": 0, "node_errors": {}}

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self.entries.get(prompt_id)

    def queue(self) -> dict[str, Any]:
        return {"queue_running": [], "queue_pending": []}

    def interrupt(self, prompt_id: str) -> None:
        pass

    def delete_queued(self, prompt_id: str) -> None:
        pass
