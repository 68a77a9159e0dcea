"""`comfy-saas serve` as a newcomer runs it: nothing configured, stand-in ComfyUI, Ctrl-C, restart."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests
from conftest import free_port, wait_until

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 9}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "serve"}}}


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    exe = shutil.which("comfy-saas", path=str(Path(sys.executable).parent)) or "comfy-saas"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY", "R2_"))}
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--data-dir", str(data_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def listening() -> bool:
        line = proc.stdout.readline()
        lines.append(line)
        return "API listening on" in line or proc.poll() is not None

    wait_until(listening, 60, "the API banner")
    return proc, lines


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=30)
    return out


def test_serve_runs_a_job_end_to_end_and_survives_a_restart(tmp_path: Path):
    port = free_port()
    proc, lines = start(tmp_path / "data", port)
    banner = "".join(lines)
    assert f"http://127.0.0.1:{port}" in banner and "stand-in" in banner
    base = f"http://127.0.0.1:{port}"
    job_id = requests.post(f"{base}/v1/jobs", json={"workflow": WORKFLOW}, timeout=10).json()["id"]
    done = wait_until(lambda: (j := requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json())["status"]
                      == "completed" and j, 30, "job completed")
    out = stop(proc)
    assert proc.returncode == 0 and "stopping" in out
    # Real ComfyUI lists its input folder at once and does not create it: the launcher does.
    assert (tmp_path / "data" / "comfy" / "0" / "input").is_dir()
    assert not re.search(r"Traceback", out), out

    proc, _ = start(tmp_path / "data", port)
    try:
        again = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        assert again["status"] == "completed" and again["outputs"][0]["key"] == done["outputs"][0]["key"]
        assert requests.get(again["outputs"][0]["url"], timeout=10).content[:4] == b"\x89PNG"
    finally:
        stop(proc)
