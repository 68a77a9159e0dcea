"""Shared fixtures: a data folder per test, local twins, a store, and real local servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_process import DOUBLE_DIR, ComfyProcess
from object_store import S3Store
from settings import S3Config, Settings
from storage import JobStore
from twins import LocalDict, LocalQueue


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
def store(db_path: Path, settings: Settings) -> JobStore:
    return JobStore(LocalDict(db_path), LocalQueue(db_path), settings)


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
    config = S3Config(bucket=bucket, endpoint_url=s3_server, region="auto", access_key_id="test",
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
