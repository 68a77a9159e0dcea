"""SSRF guard: URLs into our own network are refused before any byte is fetched, after redirects too."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import wait_until

from comfy_saas.backends.safe_fetch import address_refusal, check_public_url, check_public_urls, fetch, parse_allowlist
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
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # quick shutdown
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
    # IPv6 forms that carry an IPv4 address inside: 6to4, NAT64, v4-compatible, Teredo
    "http://[2002:7f00:1::]/", "http://[2002:a9fe:a9fe::]/", "http://[2002:0a00:0001::1]/", "http://[64:ff9b::7f00:1]/",
    "http://[::127.0.0.1]/", "http://[2001:0:7f00:1::1]/", "http://[2001:0:a9fe:a9fe::]/",
    # ranges an older ipaddress may call global: IPv6 site-local, IETF protocol assignments, 6to4 relays
    "http://[fec0::1]/", "http://[fedc::1]/", "http://192.0.0.1/", "http://192.0.0.9/", "http://192.0.0.170/",
    "http://192.88.99.1/",
    # ports that are not ports
    "http://example.com:99999/", "http://example.com:abc/", "http://example.com:-1/", "http://example.com:0/",
])
def test_private_loopback_link_local_and_odd_forms_are_refused(url: str):
    with pytest.raises(MediaError):
        check_public_url(url, [])


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1"])
def test_public_addresses_pass_including_6to4_of_a_public_one(address: str):
    assert address_refusal(ipaddress.ip_address(address), []) is None


def test_urls_are_resolved_concurrently_under_one_deadline(monkeypatch: pytest.MonkeyPatch):
    """16 media URLs and a webhook never wait on each other's DNS; a host that never answers is refused."""
    in_flight, most, lock, never = [0], [0], threading.Lock(), threading.Event()
    real = socket.getaddrinfo

    def slow_dns(host: str, *args, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            if host == "never.example":
                never.wait(5)
            else:
                wait_until(lambda: most[0] >= 4, 5, "other lookups to start")
            return real("127.0.0.1", *args, **kwargs) if host != "never.example" else []
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    urls = [f"http://h{i}.example/a.png" for i in range(16)] + ["http://never.example/hook"]
    verdicts = check_public_urls(urls, LOOPBACK_ONLY, timeout_s=1)
    never.set()
    assert most[0] >= 4  # the lookups overlapped
    assert verdicts[:16] == [None] * 16 and "did not resolve within 1s" in verdicts[16]


def test_the_allowlist_is_needed_even_for_loopback(outer: Recorder):
    with pytest.raises(MediaError, match="loopback"):
        fetch(f"{outer.base}/ok.png", 1000, 5, [])
    assert outer.hits == []
