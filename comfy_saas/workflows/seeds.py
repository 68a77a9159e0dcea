"""Seeds drawn at submit: a seed-like input given -1 or "random" gets a fresh seed, recorded on the job.

Seed-like is the frontend's rule (an INT with a control_after_generate widget: flagged, or named seed /
noise_seed). Without a catalogue only the names count. A submission with an idempotency key draws from a
generator seeded by that key, so a repeat of it is recognised as the same request.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from comfy_saas.workflows import catalogue

# The frontend's randomize range (2**50): JavaScript numbers stay exact, and any node accepts it.
SEED_CAP = 1_125_899_906_842_624


def wants_random(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value == -1) or \
        (isinstance(value, str) and value.strip().lower() == "random")


def submission_rng(user_id: str | None, idempotency_key: str | None) -> random.Random:
    """Random for a plain submission; deterministic per (user, idempotency key) so a repeat draws the same."""
    if not idempotency_key:
        return random.SystemRandom()
    digest = hashlib.sha256(f"{user_id or ''}\0{idempotency_key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def seed_entry(nodes: dict[str, Any] | None, class_type: Any, name: str) -> dict[str, Any] | None:
    """The catalogue entry of a seed-like input, None if the input is not seed-like."""
    if nodes is None:
        return {} if name in ("seed", "noise_seed") else None
    entry = catalogue.inputs_of(nodes.get(class_type) or {}).get(name)
    return entry if entry is not None and catalogue.is_seed(name, entry) else None


def draw_seed(entry: dict[str, Any], rng: random.Random) -> int:
    low = max(int(entry.get("min") or 0), 0)
    high = min(int(entry.get("max") if entry.get("max") is not None else SEED_CAP), SEED_CAP)
    return rng.randint(low, max(low, high))


def draw(workflow: dict[str, Any], overrides: list[dict[str, Any]], nodes: dict[str, Any] | None,
         rng: random.Random) -> list[dict[str, Any]]:
    """Replace every -1/"random" seed in the workflow and the overrides, in place; the seeds drawn."""
    drawn = []
    overridden = {(o["node"], o["input"]) for o in overrides}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") or {}
        for name, value in inputs.items():
            if (node_id, name) in overridden or not wants_random(value):
                continue
            entry = seed_entry(nodes, node.get("class_type"), name)
            if entry is not None:
                inputs[name] = draw_seed(entry, rng)
                drawn.append({"node": node_id, "input": name, "value": inputs[name]})
    for o in overrides:
        node = workflow.get(o["node"]) or {}
        entry = seed_entry(nodes, node.get("class_type"), o["input"]) if wants_random(o["value"]) else None
        if entry is not None:
            o["value"] = draw_seed(entry, rng)
            drawn.append({"node": o["node"], "input": o["input"], "value": o["value"]})
    return drawn
