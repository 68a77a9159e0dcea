"""The whole service on one machine: the HTTP API, N workers each with its own ComfyUI, and the sweeper.

State lives under one data directory (SQLite twins of Dict/Queue, output files, ComfyUI folders), so a
restart keeps jobs and outputs. ComfyUI comes from a URL, a ComfyUI directory it launches, or the
built-in protocol double.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from comfy_saas.config import Settings
from comfy_saas.jobs.services import local_services
from comfy_saas.runner.comfy_client import ComfyClient
from comfy_saas.runner.comfy_files import ComfyFolders
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess
from comfy_saas.runner.model_links import ModelLinks
from comfy_saas.runner.worker import Worker

log = logging.getLogger(__name__)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKER_POLL_S = 0.25  # how long a local worker waits on the queue before checking for a stop
THREAD_SWITCH_S = 0.0005  # how long one thread may hold the interpreter while another waits for it


@dataclass
class StackOptions:
    """How the local stack runs; where ComfyUI comes from is in Settings.comfyui."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    sweep_interval_s: float = 5.0
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
        self.settings = replace(settings, public_base_url=settings.public_base_url or
                                f"http://{options.host}:{options.port}")
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
                            on_unhealthy=self._recovery_for(i), **job_models(self.settings, self._dir(f"comfy/{i}")))
            self.workers.append(worker)
            # A short poll: a stop (Ctrl-C, a test's teardown) waits for the current one to return.
            self._spawn(f"worker-{i}-{pool}", worker.run, self._stop, WORKER_POLL_S)
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
            return comfy_at_url(self.settings)
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

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking jobs, give the threads grace_s to notice, then stop ComfyUI (a job still running then
        loses its ComfyUI and is requeued, as after any crash). Bounded, so a stop signal is honoured fast."""
        self._stop.set()
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.processes:
            proc.stop(grace_s=grace_s)


def comfy_at_url(settings: Settings) -> ComfyClient:
    """A client for the configured ComfyUI URL; with its base directory configured, the worker can delete
    each job's files from its folders."""
    client = ComfyClient(settings.comfyui.url)
    if settings.comfyui.base_dir:
        client.folders = ComfyFolders.under(settings.comfyui.base_dir)
    return client


def job_models(settings: Settings, root: Path) -> dict:
    """The Worker arguments for job models: where its ComfyUI reads them (a launched one: `root/models`; one at a
    URL: COMFY_COMFYUI_MODELS_DIR or none), and the ComfyUI's own models folder a name there would shadow."""
    source = settings.comfyui
    models_dir = (source.models_dir or None) if source.url else root / "models"
    return {"models_dir": models_dir, "model_shadows": [Path(source.dir) / "models"] if source.dir else []}


def launch_comfyui(settings: Settings, root: Path) -> ComfyProcess:
    """Start the configured ComfyUI (or the built-in stand-in) with its folders under `root`, job models
    included (`root/models`, an extra model path searched first)."""
    root = root.resolve()  # ComfyUI runs in its own folder: every path it is given must be absolute
    for sub in ("input", "output"):  # ComfyUI lists them at once and does not create them itself
        (root / sub).mkdir(parents=True, exist_ok=True)
    source = settings.comfyui
    config = ModelLinks(root / "models").write_config(root / "extra_model_paths.yaml")
    args = ["--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--temp-directory", str(root), "--extra-model-paths-config", str(config), *shlex.split(source.args)]
    python = (source.python if source.dir else "") or sys.executable
    proc = ComfyProcess(source.dir or DOUBLE_DIR, free_port(), args, log_path=root / "comfyui.log", python=python)
    proc.start()
    return proc


def serve(settings: Settings, options: StackOptions) -> None:
    """Run the local stack in the foreground until Ctrl-C."""
    import uvicorn

    from comfy_saas.web.http import create_app

    settings = replace(settings, allow_anonymous=not settings.api_keys)
    # The API and the workers are threads of this one process: at Python's default 5 ms switch interval a
    # thread busy answering a request holds up a worker that ComfyUI's socket has just woken (and the other
    # way round) for up to 5 ms, a wait that is not work on every step of a job.
    sys.setswitchinterval(THREAD_SWITCH_S)
    stack = LocalStack(settings, options)
    print(f"comfy-saas: data in {settings.data_dir.resolve()}", flush=True)
    print(f"comfy-saas: starting {stack._worker_count()} worker(s) per pool ({', '.join(stack.pools)}) on "
          f"{stack.comfy_source}", flush=True)
    app = create_app(stack.services)  # refuses malformed settings before anything is started
    # Clients keep their connection between polls (an SDK's session does): uvicorn's 5 s default would make
    # one that polls less often than that reconnect on every request; 75 s is aiohttp's (ComfyUI's) default.
    server = _signal_safe_server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                                                timeout_graceful_shutdown=3, timeout_keep_alive=75))
    try:
        stack.start()
        threading.Thread(target=_banner_when_listening, args=(server, options, settings), daemon=True).start()
        server.run()
    finally:
        with _signals_ignored():
            print("comfy-saas: stopping workers and ComfyUI", flush=True)
            stack.stop()


def _signal_safe_server(config: Any) -> Any:
    """uvicorn's server, stopped by SIGTERM exactly as by SIGINT. uvicorn re-raises the signal that stopped
    it once it has shut down; a re-raised SIGTERM kills the process before `serve` stops the workers and
    ComfyUI. Here both signals ask it to exit (a second one stops waiting for open connections), and `run`
    simply returns."""
    import uvicorn

    class SignalSafeServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            before = {sig: signal.signal(sig, self.ask_to_exit) for sig in _STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

        def ask_to_exit(self, sig: int, frame: Any) -> None:
            self.force_exit = self.should_exit
            self.should_exit = True

    return SignalSafeServer(config)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While cleaning up (bounded), a repeated Ctrl-C or SIGTERM must not cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _banner_when_listening(server, options: StackOptions, settings: Settings) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.02)
    if server.started:
        base = f"http://{options.host}:{options.port}"
        print(f"comfy-saas: API listening on {base}  (docs: {base}/docs, health: {base}/health)", flush=True)
        from comfy_saas.native.editor import banner

        print(f"comfy-saas: {banner(base)}", flush=True)
        if not settings.api_keys:
            print("comfy-saas: no COMFY_API_KEYS set: the API accepts requests without a key", flush=True)
