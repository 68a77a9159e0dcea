"""`make check-image`: the GPU image's pip steps resolved the way its build runs them, and no step moves a pin.

Each pool image's layers are rendered offline (tests/test_images_offline.py) and every `pip install` in them is
resolved with `pip install --dry-run --ignore-installed --report`, with the constraints file the image writes
and ComfyUI's requirements at deploy.toml's commit (tests/fixtures/images/comfyui-requirements.txt). A pin
(`name==version` in a step or in the constraints) that a later step would resolve to another version fails the
check: pip would replace the installed one during the build. Torch comes from the index this machine reaches
(PyPI, whose Linux torch 2.8.0 is the CUDA 12.8 build the image's own index serves). Custom nodes'
requirements are cloned at build time and cannot be resolved here; they are listed as skipped.

Needs PyPI (about a minute): run by `make check-image` after `make test` in CI, not by `make test`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_images_offline import ROOT, render

FIXTURE = ROOT / "tests" / "fixtures" / "images" / "comfyui-requirements.txt"
LATEST = "2025.06"


@dataclass
class PipStep:
    """One `pip install` of an image build: its arguments, with the image's paths mapped to local files."""

    args: list[str]
    where: str


def segments(commands: list[str]) -> list[str]:
    """The shell commands of a layer's RUN lines, split at `&&`."""
    out = []
    for command in commands:
        if command.startswith("RUN "):
            out += [part.strip() for part in command[4:].split("&&")]
    return out


def pip_args(segment: str) -> list[str] | None:
    """The arguments after `pip install` in a shell command, or None if it is not one."""
    words = shlex.split(segment)
    for i in range(len(words) - 1):
        if words[i] == "pip" and words[i + 1] == "install":
            return words[i + 2:]
    return None


def local_step(args: list[str], paths: dict[str, str]) -> list[str]:
    """The step's arguments for a dry run here: image paths mapped, the torch index dropped (PyPI serves it)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--index-url", "--extra-index-url"):
            skip = True
        else:
            out.append(paths.get(arg, arg))
    return out


def pins(lines: list[str]) -> dict[str, str]:
    """{canonical name: version} of every `name==version` among requirement strings."""
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            found[canonicalize_name(req.name)] = exact[0]
    return found


def moved(report: dict, pinned: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{name: (pin, resolved)} for every pinned package a dry-run report would install at another version."""
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    return {name: (pin, resolved[name]) for name, pin in pinned.items() if name in resolved and resolved[name] != pin}


def dry_run(args: list[str], tmp: Path) -> dict:
    report = tmp / "report.json"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--no-input", "--report", str(report), *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"pip could not resolve {args}:\n{out.stderr[-3000:]}"
    return json.loads(report.read_text())


def image_steps(layers: list[list[str]], tmp: Path) -> tuple[list[PipStep], list[str], Path | None]:
    """The image's pip steps in build order (Modal's base layer aside), the ones skipped, and the constraints
    file its build writes (made here by running the image's own step)."""
    import worker

    constraints = tmp / "constraints.txt"
    paths = {f"{worker.COMFY_DIR}/requirements.txt": str(FIXTURE), worker.CONSTRAINTS: str(constraints)}
    steps, written = [], None
    base, *own = layers
    skipped = [s for s in segments(base) if pip_args(s) is not None]  # Modal's base image tooling: pip, wheel, uv
    for segment in (s for layer in own for s in segments(layer)):
        if segment.endswith(f"> {worker.CONSTRAINTS}"):
            subprocess.run(["sh", "-c", segment.replace(worker.CONSTRAINTS, str(constraints))], check=True)
            written = constraints
        elif (args := pip_args(segment)) is not None:
            if "-r" in args and args[args.index("-r") + 1] not in paths:
                skipped.append(segment)  # a custom node's requirements, cloned at build time
                continue
            steps.append(PipStep(local_step(args, paths), segment))
    return steps, skipped, written


def step_pins(step: PipStep) -> dict[str, str]:
    return pins([a for a in step.args if not a.startswith("-") and "/" not in a])


@pytest.fixture(scope="module")
def pool_layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[str]]]:
    rendered = render(tmp_path_factory.mktemp("home"), ROOT)
    return {name: versions[LATEST] for name, versions in rendered.items() if name.startswith("pool:")}


def test_the_fixture_is_comfyuis_requirements_at_the_pinned_commit():
    import worker

    header = FIXTURE.read_text().splitlines()[0]
    assert "0.3.64" in header and worker.CONFIG.comfyui.commit == "a125cd84b054a57729b5eecab930ca9408719832"


def test_no_pip_step_moves_a_pin(pool_layers: dict, tmp_path: Path):
    for pool, layers in pool_layers.items():
        steps, skipped, constraints = image_steps(layers, tmp_path)
        pinned = pins(constraints.read_text().splitlines()) if constraints else {}
        problems = []
        for step in steps:
            moves = moved(dry_run(step.args, tmp_path), pinned)
            problems += [f"{step.where}: {name} {pin} -> {got}" for name, (pin, got) in moves.items()]
            pinned = {**step_pins(step), **pinned}
        print(f"{pool}: {len(steps)} pip steps resolved, pins {pinned}, skipped {skipped}")
        assert problems == [], f"{pool}: a later pip step would move a pin:\n" + "\n".join(problems)
        unconstrained = [s.where for s in steps if "-c" not in s.args or s.args[s.args.index("-c") + 1] != str(
            constraints)]
        assert unconstrained == [], f"{pool}: pip steps without the image's constraints"


def test_a_moved_pin_is_found():
    report = {"install": [{"metadata": {"name": "huggingface-hub", "version": "2.4.0"}},
                          {"metadata": {"name": "torch", "version": "2.8.0"}}]}
    assert moved(report, pins(["huggingface_hub[hf_xet]==0.36.0", "torch==2.8.0", "transformers<5"])) == {
        "huggingface-hub": ("0.36.0", "2.4.0")}
