"""Every top-level module is installed (pyproject lists them by hand: a flat layout)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_top_level_module_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {p.stem for p in ROOT.glob("*.py")}
    assert set(tool["py-modules"]) == on_disk
    assert set(tool["packages"]) == {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"comfyui_double"}
