"""The package reads top down: no module imports one above it (at import time or inside a function), the
client SDK imports nothing of the server, and the ComfyUI stand-in stands alone."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "comfy_saas"

# Lower numbers sit lower. A module may import its own level or below.
LAYERS = [
    ["errors", "logs", "signing", "config", "comfyui_double", "client", "inputs"],
    ["backends"],
    ["workflows"],
    ["jobs.model", "jobs.keys", "jobs.deliveries", "jobs.changes"],
    ["jobs.request", "jobs.index", "jobs.counters", "jobs.prepare", "jobs.model_leases", "jobs.held_keys",
     "jobs.output_ids"],
    ["jobs.idempotency", "jobs.quotas", "jobs.payloads"],
    ["jobs.store"],
    ["jobs.lifecycle", "jobs.watchlist", "jobs.rollup"],
    ["jobs.views", "jobs.webhooks"],
    ["jobs.services"],
    ["jobs.catalogues"],
    ["jobs.operations", "jobs.sweeper", "jobs.cleanup", "jobs.templates", "jobs.model_cache", "jobs.wakeups"],
    ["jobs.ops"],
    ["runner", "web", "v2", "native"],
    ["local", "modal_runtime"],
    ["cli"],
]


def layer_of(module: str) -> int:
    """The layer of a dotted name under comfy_saas (most specific prefix wins)."""
    best, length = None, -1
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = rank, len(name)
    assert best is not None, f"comfy_saas.{module} has no layer in test_layers.LAYERS"
    return best


def imports(path: Path) -> set[str]:
    """Every comfy_saas module a file imports, wherever the import statement stands (type-only imports under
    `if TYPE_CHECKING:` name a shape, not a dependency, and are left out)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comfy_saas"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("comfy_saas")}
    return {n.removeprefix("comfy_saas").lstrip(".") for n in found} - {""}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        if dotted != "__init__":
            out[dotted] = path
    return out


def _is_module(name: str, known: dict[str, Path]) -> bool:
    return name in known or any(k.startswith(name + ".") for k in known)


def test_no_module_imports_one_above_it():
    known = modules()
    upward = []
    for name, path in known.items():
        for target in imports(path):
            target = target if _is_module(target, known) else target.rpartition(".")[0]
            if target and layer_of(target) > layer_of(name):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_the_client_sdk_imports_nothing_of_the_server():
    assert imports(PACKAGE / "client.py") <= {"signing", "signing.verify"}


def test_the_comfyui_stand_in_stands_alone():
    for path in (PACKAGE / "comfyui_double").glob("*.py"):
        assert all(i.startswith("comfyui_double") for i in imports(path)), path
