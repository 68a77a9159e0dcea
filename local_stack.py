"""The whole service on one machine: the HTTP API, N workers each with its own ComfyUI, and the sweeper.

State lives under one data directory (SQLite twins of Dict/Queue, output files, ComfyUI folders), so a
restart keeps jobs and outputs. ComfyUI comes from a URL, a ComfyUI directory it launches, or the
built-in protocol double.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import api
from comfy_client import ComfyClient
from comfy_process import DOUBLE_DIR, ComfyProcess
from object_store import object_store
from settings import Settings
from storage import JobStore
from twins import LocalDict, LocalQueue
from worker import Worker

log = logging.getLogger(__name__)


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    comfyui_url: str | None = None
    comfyui_dir: Path | None = None
    comfyui_args: tuple[str, ...] = ()
    comfyui_python: str | None = None  # the interpreter of a launched ComfyUI (its own venv, with torch)
    sweep_interval_s: float = 30.0
    webhook_interval_s: float = 1.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_services(settings: Settings) -> api.Services:
    """Store, queue and object storage under settings.data_dir."""
    db = settings.data_dir / "state.sqlite3"
    store = JobStore(LocalDict(db, "jobs"), LocalQueue(db, "work"), settings)
    return api.Services(store=store, objects=object_store(settings), settings=settings)


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
        if self.options.comfyui_url:
            return f"ComfyUI at {self.options.comfyui_url}"
        if self.options.comfyui_dir:
            return f"ComfyUI launched from {self.options.comfyui_dir}"
        return "the built-in ComfyUI stand-in (protocol double: no models, a few Pillow nodes)"

    def start(self) -> None:
        for i in range(self._worker_count()):
            client = self._comfy_for(i)
            worker = Worker(self.services.store, self.services.objects, client, self.settings,
                            scratch_dir=self._dir(f"workers/{i}/scratch"), on_unhealthy=self._recovery_for(i))
            self.workers.append(worker)
            self._spawn(f"worker-{i}", worker.run, self._stop)
        self._spawn("sweeper", self._sweep_loop)
        self._spawn("webhooks", self._webhook_loop)

    def _worker_count(self) -> int:
        if self.options.comfyui_url and self.options.workers > 1:
            log.warning("one ComfyUI URL serves one worker at a time; running 1 worker, not %s",
                        self.options.workers)
            return 1
        return max(1, self.options.workers)

    def _comfy_for(self, i: int) -> ComfyClient:
        if self.options.comfyui_url:
            return ComfyClient(self.options.comfyui_url)
        root = self._dir(f"comfy/{i}")
        for sub in ("input", "output"):  # ComfyUI lists them at once and does not create them itself
            (root / sub).mkdir(exist_ok=True)
        args = ["--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
                "--temp-directory", str(root), *self.options.comfyui_args]
        python = (self.options.comfyui_python if self.options.comfyui_dir else None) or sys.executable
        proc = ComfyProcess(self.options.comfyui_dir or DOUBLE_DIR, free_port(), args, log_path=root / "comfyui.log",
                            python=python)
        proc.start()
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
        import sweeper

        while not self._stop.wait(self.options.sweep_interval_s):
            try:
                sweeper.sweep(self.services.store, self.settings)
            except Exception:
                log.exception("sweep failed")

    def _webhook_loop(self) -> None:
        import webhooks

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


def serve(settings: Settings, options: StackOptions) -> None:
    """Run the local stack in the foreground until Ctrl-C."""
    import uvicorn

    from http_api import create_app

    settings = replace(settings, require_auth=bool(settings.api_keys))
    stack = LocalStack(settings, options)
    print(f"comfy-saas: data in {settings.data_dir.resolve()}", flush=True)
    print(f"comfy-saas: starting {stack._worker_count()} worker(s) on {stack.comfy_source}", flush=True)
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
