"""The wheel: it holds the comfy_saas package alone, and installed (not editable) into a fresh environment
its `comfy-saas` serves the README's first job from any directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .` on a copy of the checkout (the build leaves no files in the repository)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "app.py", "worker.py", "storage.py", "deploy.toml"):
        shutil.copy(ROOT / name, src / name)
    for name in ("comfy_saas", "memory_snapshot_helper", "tests", "bench"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("comfy_saas-*.whl"))


def test_the_wheel_holds_the_package_alone_with_its_data(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"comfy_saas"}
    assert "comfy_saas/comfyui_double/main.py" in names  # the stand-in ComfyUI ships with it
    assert not any(n.startswith(("memory_snapshot_helper", "tests")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with only the wheel installed; its dependencies are borrowed from this environment."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    # A plain path line: this environment's packages, without running its .pth files (no editable checkout).
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    yield venv


def test_an_installed_comfy_saas_serves_the_first_job_from_anywhere(installed: Path, tmp_path: Path):
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import comfy_saas; print(comfy_saas.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert str(installed) in where and str(ROOT) not in where
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY")}
    proc = subprocess.Popen([str(installed / "bin" / "comfy-saas"), "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], cwd=elsewhere, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(base), 60, "the installed server")
        workflow = json.loads((ROOT / "examples" / "first_job.json").read_text())
        job_id = requests.post(f"{base}/v1/jobs", json={"workflow": workflow}, timeout=10).json()["id"]
        done = wait_until(lambda: (j := requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json())["status"]
                          in {"completed", "failed"} and j, 60, "the first job")
        assert done["status"] == "completed", done
        image = requests.get(done["outputs"][0]["url"], timeout=10)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert shutil.which("comfy-saas", path=str(installed / "bin"))


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
