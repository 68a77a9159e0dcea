"""The whole service on one machine: the HTTP API, N workers each with its own ComfyUI, and the sweeper.

State lives under one data directory (SQLite twins of Dict/Queue, output files, ComfyUI folders), so a
restart keeps jobs and outputs. ComfyUI comes from a URL, a ComfyUI directory it launches, or the
built-in protocol double.
"""

from __future__ import annotations

import logging
import shlex
import socket
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from comfy_saas.config import Settings
from comfy_saas.jobs.services import local_services
from comfy_saas.runner.comfy_client import ComfyClient
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess
from comfy_saas.runner.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class StackOptions:
    """How the local stack runs; where ComfyUI comes from is in Settings.comfyui."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    sweep_interval_s: float = 30.0
    webhook_interval_s: float = 1.0
    pools: list[str] | None = None  # the pools local workers serve (each gets `workers`); None: every pool


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalStack:
    """Starts and stops everything but the HTTP server itself (see `serve`)."""

    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.options = options
        self.settings = replace(settings, public_base_url=f"http://{options.host}:{options.port}")
        self.services = local_services(self.settings)
        self.processes: list[ComfyProcess] = []
        self.workers: list[Worker] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def comfy_source(self) -> str:
        source = self.settings.comfyui
        if source.url:
            return f"ComfyUI at {source.url}"
        if source.dir:
            return f"ComfyUI launched from {source.dir}"
        return "the built-in ComfyUI stand-in (protocol double: no models, a few Pillow nodes)"

    @property
    def pools(self) -> list[str]:
        """The pools this stack's workers serve (COMFY_POOLS, or StackOptions.pools)."""
        return self.options.pools or list(self.settings.pool_table())

    def start(self) -> None:
        for i, pool in enumerate(p for p in self.pools for _ in range(self._worker_count())):
            client = self._comfy_for(i)
            worker = Worker(self.services, client, pool=pool, scratch_dir=self._dir(f"workers/{i}/scratch"),
                            on_unhealthy=self._recovery_for(i))
            self.workers.append(worker)
            self._spawn(f"worker-{i}-{pool}", worker.run, self._stop)
        self._spawn("sweeper", self._sweep_loop)
        self._spawn("webhooks", self._webhook_loop)

    def _worker_count(self) -> int:
        if self.settings.comfyui.url and self.options.workers > 1:
            log.warning("one ComfyUI URL serves one worker at a time; running 1 worker, not %s",
                        self.options.workers)
            return 1
        return max(1, self.options.workers)

    def _comfy_for(self, i: int) -> ComfyClient:
        if self.settings.comfyui.url:
            return ComfyClient(self.settings.comfyui.url)
        proc = launch_comfyui(self.settings, self._dir(f"comfy/{i}"))
        self.processes.append(proc)
        return proc.client

    def _recovery_for(self, i: int):
        def recover() -> bool:
            if i >= len(self.processes):
                return False
            try:
                self.processes[i].restart()
                return True
            except Exception:
                log.exception("ComfyUI %s could not be restarted", i)
                return False
        return recover

    def _sweep_loop(self) -> None:
        from comfy_saas.jobs import sweeper

        while not self._stop.wait(self.options.sweep_interval_s):
            try:
                sweeper.sweep(self.services)
            except Exception:
                log.exception("sweep failed")

    def _webhook_loop(self) -> None:
        from comfy_saas.jobs import webhooks

        while not self._stop.wait(self.options.webhook_interval_s):
            try:
                webhooks.dispatch(self.services, owner="local-dispatcher")
            except Exception:
                log.exception("webhook dispatch failed")

    def _spawn(self, name: str, target, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _dir(self, sub: str) -> Path:
        path = self.settings.data_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        """Stop taking jobs, let running ones see the stop, then stop ComfyUI."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        for proc in self.processes:
            proc.stop()


def launch_comfyui(settings: Settings, root: Path) -> ComfyProcess:
    """Start the configured ComfyUI (or the built-in stand-in) with its folders under `root`."""
    for sub in ("input", "output"):  # ComfyUI lists them at once and does not create them itself
        (root / sub).mkdir(parents=True, exist_ok=True)
    source = settings.comfyui
    args = ["--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--temp-directory", str(root), *shlex.split(source.args)]
    python = (source.python if source.dir else "") or sys.executable
    proc = ComfyProcess(source.dir or DOUBLE_DIR, free_port(), args, log_path=root / "comfyui.log", python=python)
    proc.start()
    return proc


def serve(settings: Settings, options: StackOptions) -> None:
    """Run the local stack in the foreground until Ctrl-C."""
    import uvicorn

    from comfy_saas.web.http import create_app

    settings = replace(settings, require_auth=bool(settings.api_keys))
    stack = LocalStack(settings, options)
    print(f"comfy-saas: data in {settings.data_dir.resolve()}", flush=True)
    print(f"comfy-saas: starting {stack._worker_count()} worker(s) per pool ({', '.join(stack.pools)}) on "
          f"{stack.comfy_source}", flush=True)
    stack.start()
    server = uvicorn.Server(uvicorn.Config(create_app(stack.services), host=options.host, port=options.port,
                                           log_level="warning"))
    threading.Thread(target=_banner_when_listening, args=(server, options, settings), daemon=True).start()
    try:
        server.run()
    finally:
        print("comfy-saas: stopping workers and ComfyUI", flush=True)
        stack.stop()


def _banner_when_listening(server, options: StackOptions, settings: Settings) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.02)
    if server.started:
        base = f"http://{options.host}:{options.port}"
        print(f"comfy-saas: API listening on {base}  (docs: {base}/docs, health: {base}/health)", flush=True)
        if not settings.api_keys:
            print("comfy-saas: no COMFY_API_KEYS set: the API accepts requests without a key", flush=True)
