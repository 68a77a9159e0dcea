"""`comfy-saas serve` as a newcomer runs it: nothing configured, stand-in ComfyUI, Ctrl-C, restart; and as an
operator stops it: SIGTERM stops everything, and even `kill -9` leaves no ComfyUI behind."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import children_of, free_port, process_alive, start_serve, wait_until

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 9}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "serve"}}}


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)  # SIGINT is Ctrl-C
    out, _ = proc.communicate(timeout=30)
    return out


def test_serve_runs_a_job_end_to_end_and_survives_a_restart(tmp_path: Path):
    """As `make serve` runs it: no data dir given, so ./data, a relative path ComfyUI (in its own folder)
    must never see."""
    port = free_port()
    proc, lines = start_serve(None, port, cwd=tmp_path)
    banner = "".join(lines)
    assert f"http://127.0.0.1:{port}" in banner and "stand-in" in banner
    base = f"http://127.0.0.1:{port}"
    job_id = requests.post(f"{base}/v1/jobs", json={"workflow": WORKFLOW}, timeout=10).json()["id"]
    done = wait_until(lambda: (j := requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json())["status"]
                      == "completed" and j, 30, "job completed")
    comfyui = children_of(proc.pid)
    out = stop(proc)
    assert proc.returncode == 0 and "stopping" in out
    assert comfyui and not any(process_alive(pid) for pid in comfyui)
    # Real ComfyUI lists its input folder at once and does not create it: the launcher does.
    assert (tmp_path / "data" / "comfy" / "0" / "input").is_dir()
    assert not re.search(r"Traceback", out), out

    proc, _ = start_serve(None, port, cwd=tmp_path)
    try:
        again = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        assert again["status"] == "completed" and again["outputs"][0]["key"] == done["outputs"][0]["key"]
        assert requests.get(again["outputs"][0]["url"], timeout=10).content[:4] == b"\x89PNG"
    finally:
        stop(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_sigterm_and_kill_9_leave_no_comfyui_behind(tmp_path: Path, sig: int):
    proc, _ = start_serve(tmp_path / "data", free_port())
    comfyui = children_of(proc.pid)
    assert comfyui and all(process_alive(pid) for pid in comfyui)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=15)
    if sig == signal.SIGTERM:  # a clean stop, with its cleanup, like Ctrl-C
        assert proc.returncode == 0 and "stopping workers and ComfyUI" in out, out
    # After kill -9 no cleanup can run: ComfyUI goes because the kernel kills it with its parent.
    wait_until(lambda: not any(process_alive(pid) for pid in comfyui), 15, "ComfyUI to exit with its parent")
