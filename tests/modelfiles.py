"""A model file server for the tests: counts every download, supports Range, can hold a file half-way (until
released) or drop the connection half-way once, and records the Authorization header each request carried."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def blob(seed: str, size: int = 48 * 1024) -> bytes:
    """Deterministic bytes that differ per seed."""
    out, block = bytearray(), hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.files = dict(files or {})
        self.gets: Counter = Counter()
        self.held: dict[str, threading.Event] = {}
        self.drop_once: set[str] = set()
        self.ranges: list[str] = []
        self.redirects: dict[str, str] = {}
        self.auth: list[tuple[str, str | None]] = []
        super().__init__((host, 0), _Handler)

    def url(self, path: str) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}{path}"

    def hold(self, path: str) -> threading.Event:
        """Serve the first half of path, then wait for the returned event."""
        self.held[path] = threading.Event()
        return self.held[path]

    def release_all(self) -> None:
        for event in self.held.values():
            event.set()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: FileServer = self.server  # type: ignore[assignment]
        path = urlsplit(self.path).path
        server.gets[path] += 1
        server.auth.append((path, self.headers.get("Authorization")))
        if path in server.redirects:
            self._head(302, {"Location": server.redirects[path], "Content-Length": "0"})
            return
        body = server.files.get(path)
        if body is None:
            self._head(404, {"Content-Length": "0"})
            return
        start = self._range_start()
        if start:
            server.ranges.append(f"{path} from {start}")
            self._head(206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                             "Content-Length": str(len(body) - start), "Accept-Ranges": "bytes", "ETag": '"v1"'})
        else:
            self._head(200, {"Content-Length": str(len(body)), "Accept-Ranges": "bytes", "ETag": '"v1"'})
        self._body(server, path, body[start:])

    def _range_start(self) -> int:
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        return int(m.group(1)) if m else 0

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _body(self, server: FileServer, path: str, data: bytes) -> None:
        half = len(data) // 2
        try:
            if path in server.drop_once:
                server.drop_once.discard(path)
                self.wfile.write(data[:half])
                self.wfile.flush()
                self.connection.shutdown(2)  # the client sees the body end early
                return
            if path in server.held:
                self.wfile.write(data[:half])
                self.wfile.flush()
                server.held[path].wait(30)
                data = data[half:]
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def file_server(files: dict[str, bytes] | None = None, host: str = "127.0.0.1") -> Iterator[FileServer]:
    server = FileServer(files, host)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield server
    finally:
        server.release_all()
        server.shutdown()
        server.server_close()


def cache_files(root: os.PathLike) -> list[str]:
    """Every file under a model cache folder (blobs and partial downloads), relative."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
