"""ComfyUI's output on Modal: a worker's ComfyProcess streams it to the container's stdout (Modal's logs), each
line prefixed, and keeps the tail for a failed start's error, as the log file does locally."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import free_port, wait_until

from comfy_saas.errors import ComfyUnavailable
from comfy_saas.modal_runtime import COMFY_LOG_PREFIX
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess


def double_args(root: Path, *extra: str) -> list[str]:
    return ["--cpu", "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--temp-directory", str(root), *extra]


def test_comfyuis_lines_reach_the_workers_stdout_prefixed(tmp_path: Path, capsys: pytest.CaptureFixture):
    port = free_port()
    proc = ComfyProcess(DOUBLE_DIR, port, double_args(tmp_path), echo=COMFY_LOG_PREFIX)
    try:
        proc.start(ready_timeout_s=60)
        line = f"{COMFY_LOG_PREFIX}To see the GUI go to: http://127.0.0.1:{port}\n"
        seen: list[str] = []
        wait_until(lambda: seen.append(capsys.readouterr().out) or line in "".join(seen), what="ComfyUI's line")
    finally:
        proc.stop()
    assert f"To see the GUI go to: http://127.0.0.1:{port}" in proc.tail


def test_a_failed_start_names_comfyuis_last_lines(tmp_path: Path, capsys: pytest.CaptureFixture):
    with socket.socket() as taken:  # the port is in use: ComfyUI fails to bind and exits with a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = ComfyProcess(DOUBLE_DIR, taken.getsockname()[1], double_args(tmp_path), echo=COMFY_LOG_PREFIX)
        with pytest.raises(ComfyUnavailable, match=r"(?s)exited with code 1.*\[comfyui\].*address already in"):
            proc.start(ready_timeout_s=60)  # the error carries the tail, as locally the log file's
    out = capsys.readouterr().out
    assert any(ln.startswith(COMFY_LOG_PREFIX) and "address already in use" in ln.lower() for ln in out.splitlines())


def test_without_echo_or_log_the_output_is_dropped_as_before(tmp_path: Path, capsys: pytest.CaptureFixture):
    proc = ComfyProcess(DOUBLE_DIR, free_port(), double_args(tmp_path))
    try:
        proc.start(ready_timeout_s=60)
    finally:
        proc.stop()
    assert COMFY_LOG_PREFIX not in capsys.readouterr().out and not proc.tail
