"""Launching one ComfyUI server the way production does, and keeping it alive.

`python main.py --listen 127.0.0.1 --port N [flags]` from a ComfyUI directory: the real ComfyUI on
Modal or from COMFYUI_DIR locally, or the project's protocol double (comfyui_double/) otherwise.

A launched ComfyUI dies with the process that launched it, even on `kill -9` of that process: on Linux
the child asks the kernel for SIGKILL when its parent goes (PR_SET_PDEATHSIG). The kernel sends it when
the *thread* that forked the child exits, not the process, so every launch (and restart, which a worker
thread may ask for) happens on one long-lived launcher thread that ends only with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from comfy_saas.errors import ComfyUnavailable
from comfy_saas.runner.comfy_client import ComfyClient
from comfy_saas.runner.comfy_files import ComfyFolders

log = logging.getLogger(__name__)

DOUBLE_DIR = Path(__file__).resolve().parent.parent / "comfyui_double"
_PR_SET_PDEATHSIG = 1
# One thread for every launch, never shut down: its exit is what PR_SET_PDEATHSIG watches.
_LAUNCHER = ThreadPoolExecutor(1, thread_name_prefix="comfyui-launcher")
TAIL_LINES = 200  # what an echoing ComfyProcess keeps of ComfyUI's output, for a failed start's error


def _prctl():
    """libc's prctl, looked up before any fork (a forked child should call, not load); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: SIGKILL me when the launching thread (and so our process) ends;
    if the parent is already gone (it died before the request took effect), go at once."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)


class ComfyProcess:
    """One ComfyUI child process on a loopback port. Its output goes to `log_path` (locally), or with `echo` to
    this process's stdout, each line behind the `echo` prefix (on Modal, whose logs are the container's stdout),
    keeping the last lines for a failed start's error; with neither, nowhere."""

    def __init__(self, comfy_dir: str | Path, port: int, extra_args: list[str] | None = None,
                 log_path: str | Path | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None, echo: str | None = None) -> None:
        self.comfy_dir = Path(comfy_dir)
        self.port = port
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path else None
        self.echo = echo
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.python = python
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.folders = ComfyFolders.from_command(self.comfy_dir, self.extra_args)
        self.client = ComfyClient(self.url)
        self.client.folders = self.folders  # the worker deletes each job's files from them
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), *self.extra_args]

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """Start ComfyUI and wait until /system_stats answers; ComfyUnavailable if it never does."""
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyUnavailable(f"no main.py in ComfyUI directory {self.comfy_dir}")
        out = self._output()
        self.proc = _LAUNCHER.submit(
            subprocess.Popen, self.command(), cwd=self.comfy_dir, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})}, start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid())).result()
        if out not in (subprocess.DEVNULL, subprocess.PIPE):
            out.close()  # the child has its own copy
        if out is subprocess.PIPE:
            threading.Thread(target=self._relay, args=(self.proc.stdout,), name=f"comfyui-{self.port}-output",
                             daemon=True).start()
        self.wait_ready(ready_timeout_s)

    def _output(self):
        if self.log_path:
            return open(self.log_path, "ab")  # closed by start once the child has its copy
        return subprocess.PIPE if self.echo is not None else subprocess.DEVNULL

    def _relay(self, stream) -> None:
        """Each line ComfyUI writes, to our stdout behind the prefix, and into the tail; ends with the child."""
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                self.tail.append(line)
                sys.stdout.write(f"{self.echo}{line}\n")
                sys.stdout.flush()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ComfyUnavailable(f"ComfyUI exited with code {self.proc.returncode} while starting"
                                       f"{self._log_tail()}")
            if self.client.healthy(timeout_s=1.0):
                return
            time.sleep(0.05)
        self.stop()
        raise ComfyUnavailable(f"ComfyUI did not answer /system_stats within {timeout_s:.0f}s{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        """Where the log is and its last lines, so a failed start says why (e.g. no GPU: pass --cpu)."""
        if self.log_path is not None and self.log_path.is_file():
            where, tail = f"its log is {self.log_path}", self.log_path.read_text(errors="replace").splitlines()
        elif self.echo is not None:
            self._drain_output()
            where, tail = f"its output (lines starting {self.echo.strip()!r} above)", list(self.tail)
        else:
            return " (no log kept; start it with a log path to see why)"
        tail = tail[-lines:]
        hint = ""
        if any("CUDA" in line or "NVIDIA" in line or "torch.cuda" in line for line in tail):
            hint = "\nIt looks like ComfyUI wanted a GPU: on a machine without one pass --comfyui-args=--cpu"
        return f"; {where}, ending:\n" + "\n".join(f"  {line}" for line in tail) + hint

    def _drain_output(self, timeout_s: float = 2.0) -> None:
        # A child that exited may still have lines in the pipe: let the relay read them before the tail is taken.
        deadline = time.monotonic() + timeout_s
        stream = self.proc.stdout if self.proc is not None else None
        while stream is not None and not stream.closed and not self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, ready_timeout_s: float = 120.0) -> None:
        self.stop()
        self.restarts += 1
        log.warning("restarting ComfyUI on port %s (restart %s)", self.port, self.restarts)
        self.start(ready_timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after grace_s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass
