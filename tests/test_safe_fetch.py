"""SSRF guard: URLs into our own network are refused before any byte is fetched, after redirects too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comfy_saas.backends.safe_fetch import check_public_url, fetch, parse_allowlist
from comfy_saas.errors import MediaError

LOOPBACK_ONLY = parse_allowlist("127.0.0.1/32")


class Recorder(ThreadingHTTPServer):
    """A tiny HTTP server that records every path it is asked for."""

    def __init__(self, host: str, routes: dict[str, tuple[int, dict, bytes]]) -> None:
        self.routes, self.hits = routes, []
        super().__init__((host, 0), _Handler)

    @property
    def base(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(host: str, routes: dict) -> Iterator[Recorder]:
    server = Recorder(host, routes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def inner() -> Iterator[Recorder]:
    """A server on 127.0.0.2: inside our network and never allow-listed."""
    yield from serve("127.0.0.2", {"/secret": (200, {}, b"secret")})


@pytest.fixture
def outer(inner: Recorder) -> Iterator[Recorder]:
    """The test's 'public' server (allow-listed 127.0.0.1) that redirects inward."""
    yield from serve("127.0.0.1", {
        "/ok.png": (200, {}, b"png-bytes"),
        "/to-inner": (302, {"Location": f"{inner.base}/secret"}, b""),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
        "/big": (200, {}, b"x" * 5000),
        "/loop": (302, {"Location": "/loop"}, b""),
    })


def test_an_allowed_url_is_fetched(outer: Recorder):
    assert fetch(f"{outer.base}/ok.png", 1000, 5, LOOPBACK_ONLY) == b"png-bytes"


@pytest.mark.parametrize("path", ["/to-inner", "/to-metadata"])
def test_a_redirect_into_our_network_is_refused_before_fetching(outer: Recorder, inner: Recorder, path: str):
    with pytest.raises(MediaError, match="refused"):
        fetch(f"{outer.base}{path}", 1000, 5, LOOPBACK_ONLY)
    assert inner.hits == []


def test_size_cap_and_redirect_loops(outer: Recorder):
    with pytest.raises(MediaError, match="limit"):
        fetch(f"{outer.base}/big", 1000, 5, LOOPBACK_ONLY)
    with pytest.raises(MediaError, match="redirects"):
        fetch(f"{outer.base}/loop", 1000, 5, LOOPBACK_ONLY)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost/", "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/",
    "http://169.254.169.254/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://[fe80::1]/", "http://2130706433/", "http://0x7f000001/", "http://017700000001/", "http://0.0.0.0/",
    "http://100.64.0.1/", "file:///etc/passwd", "ftp://example.com/",
])
def test_private_loopback_link_local_and_odd_forms_are_refused(url: str):
    with pytest.raises(MediaError):
        check_public_url(url, [])


def test_the_allowlist_is_needed_even_for_loopback(outer: Recorder):
    with pytest.raises(MediaError, match="loopback"):
        fetch(f"{outer.base}/ok.png", 1000, 5, [])
    assert outer.hits == []
