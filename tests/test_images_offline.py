"""Every image the app deploys, built as far as can be without Modal: each layer rendered to the Dockerfile
commands the SDK sends (modal's own build_dockerfile functions, for every image builder version), then parsed
with a Dockerfile parser. A build step that is not one logical Dockerfile line would fail at `modal deploy`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from test_app_offline import ROOT, two_pool_checkout

# Runs in a clean interpreter with no Modal credentials; prints {image: {builder version: [layer commands]}}.
RENDER = r"""
import json, sys, typing
sys.path.insert(0, sys.argv[1])
import modal_private as private
from modal._image import ImageBuilderVersion
import app, worker
versions = [v for v in typing.get_args(ImageBuilderVersion) if v != "PREVIEW"]
images = {"api": app.api_image, **{f"pool:{name}": image for name, image in worker.IMAGES.items()}}
print(json.dumps({name: {v: private.dockerfiles(image, v) for v in versions} for name, image in images.items()}))
"""

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "CMD", "ENTRYPOINT", "SHELL", "USER",
                "LABEL", "EXPOSE"}


def render(home: Path, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", RENDER, str(ROOT / "tests")], cwd=cwd, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default deploy.toml's images and a two-pool one's (a pool with custom nodes adds layers)."""
    home = tmp_path_factory.mktemp("home")
    two = two_pool_checkout(tmp_path_factory.mktemp("checkout"))
    return {**render(home, ROOT), **{f"two-pools {k}": v for k, v in render(home, two).items()}}


def parse(commands: list[str], tmp: Path) -> list[dict]:
    parser = DockerfileParser(path=str(tmp / "Dockerfile"))
    parser.content = "\n".join(commands) + "\n"  # how the build server lays a layer's commands out
    return parser.structure


def test_every_image_and_pool_is_rendered(rendered: dict):
    assert {"api", "pool:default", "two-pools api", "two-pools pool:default", "two-pools pool:video"} == set(rendered)
    layers = rendered["two-pools pool:video"]["2025.06"]
    assert any("custom_nodes/video-nodes" in cmd for layer in layers for cmd in layer)  # the pool's own layer


def test_every_layer_parses_to_known_instructions_one_line_each(rendered: dict, tmp_path: Path):
    for image, versions in rendered.items():
        for version, layers in versions.items():
            for commands in filter(None, layers):  # a run_function layer has no commands
                where = f"{image} (builder {version}) layer {commands[1:2]}"
                parsed = parse(commands, tmp_path)
                assert [p["instruction"] for p in parsed if p["instruction"] not in INSTRUCTIONS] == [], where
                assert len(parsed) == len(commands), where  # one instruction per command, nothing spilt over
                assert all(p["startline"] == p["endline"] for p in parsed), where  # every RUN one logical line


def test_a_step_with_a_raw_newline_would_be_caught(tmp_path: Path):
    parsed = parse(["FROM base", "RUN printf %s '#!/usr/bin/env python3\nimport sys\n' > /usr/local/bin/x"],
                   tmp_path)
    assert {p["instruction"] for p in parsed} - INSTRUCTIONS == {"IMPORT", "'"}


def test_no_image_installs_modal_the_client_mount_brings_it(rendered: dict):
    for image, versions in rendered.items():
        steps = [cmd for layer in versions["2025.06"] for cmd in layer if "pip install" in cmd]
        assert steps and not [s for s in steps if "'modal" in s or " modal" in s], image


def test_the_api_image_carries_the_editor_the_surfaces_function_serves(rendered: dict):
    steps = [cmd for layer in rendered["api"]["2025.06"] for cmd in layer if "pip install" in cmd]
    assert any("comfyui-frontend-package==" in s for s in steps)
