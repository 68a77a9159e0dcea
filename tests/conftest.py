"""Shared fixtures: a data folder per test, local twins, a store, and real local servers."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_saas import signing
from comfy_saas.backends.objects import LocalStore, S3Store
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import R2Config, Settings
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import JobStore
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, url_signing_secret="test-secret", public_base_url="http://127.0.0.1:9")


@pytest.fixture
def svc(db_path: Path, settings: Settings) -> Services:
    """Services over fresh twins and a local object folder."""
    objects = LocalStore(settings.data_dir / "outputs", settings.url_signing_secret, settings.public_base_url)
    return Services.over(LocalDict(db_path), LocalQueue(db_path), settings, objects)


@pytest.fixture
def store(svc: Services) -> JobStore:
    return svc.store


def submit(svc: Services, **fields: Any):
    """Create a job the way the API does (lifecycle.create); the stored Job."""
    request = JobRequest(workflow=fields.pop("workflow", WORKFLOW), **fields)
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides", "models"})
    job, _ = svc.lifecycle.create(request, payload)
    return job


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, as a real process."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(port), 30, "moto server")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def s3(s3_server: str) -> S3Store:
    """A fresh bucket on moto's server, reached the way R2 is (region "auto")."""
    import uuid

    import boto3

    bucket = f"outputs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    config = R2Config(bucket=bucket, endpoint_url=s3_server, region="auto", access_key_id="test",
                      secret_access_key="test", multipart_threshold_bytes=5 * 1024 * 1024)
    return S3Store(config, expiry_s=600)


def start_double(root: Path, *extra: str) -> ComfyProcess:
    """The ComfyUI double launched like ComfyUI, with its folders under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    args = ["--cpu", "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--temp-directory", str(root), *extra]
    proc = ComfyProcess(DOUBLE_DIR, free_port(), args, log_path=root / "comfyui.log")
    proc.start(ready_timeout_s=60)
    return proc


@pytest.fixture
def double(tmp_path: Path) -> Iterator[ComfyProcess]:
    proc = start_double(tmp_path / "comfy")
    yield proc
    proc.stop()


KEYS = "admin-key, alice-key:alice, bob-key:bob"
ADMIN, ALICE, BOB = ({"Authorization": f"Bearer {k}"} for k in ("admin-key", "alice-key", "bob-key"))


class Server:
    """The local API on uvicorn, with its LocalStack (one worker on the double)."""

    def __init__(self, base: str, stack: Any) -> None:
        self.base, self.stack = base, stack

    def call(self, method: str, path: str, headers: dict | None = None, **kw: Any) -> requests.Response:
        return requests.request(method, self.base + path, headers=headers if headers is not None else ADMIN,
                                timeout=30, **kw)

    def done(self, job_id: str, headers: dict = ADMIN) -> dict:
        def finished() -> dict | None:
            body = self.call("GET", f"/v1/jobs/{job_id}", headers).json()
            return body if body["status"] in {"completed", "failed", "cancelled"} else None
        return wait_until(finished, 30, f"job {job_id}")


@contextmanager
def running_server(data_dir: Path, *, workers: int = 1, **settings: Any) -> Iterator[Server]:
    """The local API on uvicorn over its own LocalStack (workers on the double, one by default), with these
    settings."""
    import uvicorn

    from comfy_saas.local import LocalStack, StackOptions
    from comfy_saas.web.http import create_app

    port = free_port()
    # Jobs sent to the "idle" pool stay queued: it is declared, but no local worker serves it.
    stack = LocalStack(Settings(data_dir=data_dir, **{"api_keys": KEYS, "pools": "default,idle", **settings}),
                       StackOptions(port=port, workers=workers, sweep_interval_s=3600, pools=["default"]))
    stack.start()
    uv = uvicorn.Server(uvicorn.Config(create_app(stack.services), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started, 30, "uvicorn")
        yield Server(f"http://127.0.0.1:{port}", stack)
    finally:
        uv.should_exit = True
        thread.join(10)
        stack.stop()


def start_serve(data_dir: Path | None, port: int, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> tuple[subprocess.Popen, list[str]]:
    """`comfy-saas serve` as a user runs it, in its own process (without a data dir: ./data of `cwd`, as
    `make serve` does); returns once its banner says it listens."""
    import shutil

    exe = shutil.which("comfy-saas", path=str(Path(sys.executable).parent)) or "comfy-saas"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY", "R2_"))}
    where = [] if data_dir is None else ["--data-dir", str(data_dir)]
    proc = subprocess.Popen([exe, "serve", "--port", str(port), *where], cwd=cwd, env={**clean, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def listening() -> bool:
        line = proc.stdout.readline()
        lines.append(line)
        return "API listening on" in line or proc.poll() is not None

    wait_until(listening, 60, "the API banner")
    return proc, lines


def children_of(pid: int) -> list[int]:
    """The direct child processes of pid (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended since the listing has no children left to report
            continue
    return found


def process_alive(pid: int) -> bool:
    """True while pid runs; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in {"Z", "X"}


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in kB."""
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by a module's tests; tests that need other settings start their own."""
    with running_server(tmp_path_factory.mktemp("data")) as shared:
        yield shared


# --- a webhook receiver ---------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"test-webhook-secret-32-bytes-long").decode()


class Receiver(ThreadingHTTPServer):
    """A webhook receiver that checks every signature and answers from a script of status codes."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.received, self.bad_signatures = list(script), [], 0
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not signing.verify(SECRET, dict(self.headers), body):
            self.server.bad_signatures += 1
        self.server.received.append(json.loads(body))
        status = self.server.script.pop(0) if self.server.script else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([])
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # quick shutdown
    yield server
    server.shutdown()
