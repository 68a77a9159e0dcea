"""The v2 surface never lets one request hold the server: bodies are refused under their cap as they stream in,
and slow storage or hashing runs off the event loop, so other clients are answered meanwhile."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from conftest import ALICE, Server, running_server, wait_until

from comfy_saas.config import Limits
from comfy_saas.jobs import keys


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("blocking"), limits=Limits(max_asset_bytes=4 * 1024 * 1024)) as s:
        yield s


def raw_answer(srv: Server, head: str, body: bytes) -> tuple[int, dict]:
    """Send a request whose body never ends; the status and JSON body the server answers with (the socket's
    timeout is the deadline: a server that waits for the rest of the body fails the test)."""
    host, port = srv.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head.encode() + body)
        got = b""
        while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < _length(got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    status_line, _, rest = got.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def _length(got: bytes) -> int:
    for line in got.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_from_hash_refuses_a_body_over_its_cap_without_reading_the_rest(srv: Server) -> None:
    auth = ALICE["Authorization"]
    chunked = (f"POST /api/v2/assets/from-hash HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * (70 * 1024)
    status, body = raw_answer(srv, chunked, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")  # no last chunk
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert str(64 * 1024) in body["error"]["message"]
    declared = (f"POST /api/v2/assets/from-hash HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n")
    status, body = raw_answer(srv, declared, b"{")
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    ok = srv.call("POST", "/api/v2/assets/from-hash", ALICE, json={"hash": "blake3:" + "0" * 64})
    assert ok.status_code == 404 and ok.json()["error"]["code"] == "blob_not_found"


class Gate:
    """Holds whoever calls `wait` until `open`; `entered` tells that someone is held."""

    def __init__(self) -> None:
        self.entered, self._open = threading.Event(), threading.Event()

    def wait(self) -> None:
        self.entered.set()
        self._open.wait(30)

    def open(self) -> None:
        self._open.set()


def answers_meanwhile(srv: Server, gate: Gate) -> int:
    """While the gate holds a request inside the server, the status another client gets from /api/v2/health."""
    wait_until(gate.entered.is_set, 20, "the request to reach the slow part")
    try:
        return requests.get(srv.base + "/api/v2/health", timeout=10).status_code
    except requests.Timeout:
        return 0  # the event loop is blocked
    finally:
        gate.open()


def test_an_upload_is_hashed_off_the_event_loop(srv: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import blake3 as blake3_module

    real, gate = blake3_module.blake3, Gate()

    class SlowHasher:  # hashing a large upload takes a while: here, until the test has asked for /health
        def __init__(self) -> None:
            self._h = real()

        def update(self, data: bytes) -> None:
            gate.wait()
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(blake3_module, "blake3", SlowHasher)
    data = bytes(range(256)) * 4096
    answer: list[requests.Response] = []
    form = {"content_type": "application/octet-stream", "file_path": "big.bin"}
    sender = threading.Thread(target=lambda: answer.append(srv.call(
        "POST", "/api/v2/assets", ALICE, data=form, files={"file": ("big.bin", data, "application/octet-stream")})))
    sender.start()
    assert answers_meanwhile(srv, gate) == 200
    sender.join(30)
    assert answer[0].status_code == 201, answer[0].text
    assert answer[0].json()["hash"] == "blake3:" + real(data).hexdigest()


WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loop"}}}


def unpointed(srv: Server, job_id: str) -> None:
    """Make the finished job's outputs look stored without their pointers (by a worker from before them)."""
    svc = srv.stack.services
    job = svc.store.require(job_id)
    for out in job.outputs:
        svc.objects.path(keys.output_asset(job.created_at, out.asset_id or "")).unlink()  # a LocalStore here
    svc.store.write_record(job.model_copy(update={"outputs": [o.model_copy(update={"asset_id": None})
                                                              for o in job.outputs]}))


def test_an_event_stream_stores_output_assets_off_the_event_loop(srv: Server,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = srv.call("POST", "/v1/jobs", ALICE, json={"workflow": WF}).json()
    srv.done(job["id"], ALICE)
    unpointed(srv, job["id"])  # as a worker from before pointers stored it: the stream writes its pointer
    objects, gate = srv.stack.services.objects, Gate()
    real_put = objects.put_bytes

    def slow_put(key: str, *args: object, **kw: object) -> object:  # slow object storage, for the pointer
        if "/v2-assets/" in key:
            gate.wait()
        return real_put(key, *args, **kw)

    monkeypatch.setattr(objects, "put_bytes", slow_put)
    events: list[str] = []

    def watch() -> None:
        with requests.get(f"{srv.base}/api/v2/jobs/{job['id']}/events", headers=ALICE, stream=True,
                          timeout=30) as r:
            events.extend(line.removeprefix("event: ") for line in r.iter_lines(decode_unicode=True)
                          if line.startswith("event: "))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert answers_meanwhile(srv, gate) == 200
    watcher.join(30)
    assert events[-2:] == ["output", "status"]
