"""Fetching a URL a client gave us without letting it reach inside our network (SSRF).

Every hop (the first URL and each redirect) is resolved once; every address it resolves to must be
public, and the connection goes to that vetted address, so DNS rebinding cannot swap it afterwards.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from comfy_saas.errors import MediaError

MAX_REDIRECTS = 5
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(spec: str) -> list[_Network]:
    """'127.0.0.1/32, 10.1.0.0/16' -> networks a URL may reach although they are not public."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]


def _unmapped(addr: _Address) -> _Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_refusal(addr: _Address, allowlist: list[_Network]) -> str | None:
    """Why `addr` may not be reached, or None when it may."""
    addr = _unmapped(addr)
    if any(addr in net for net in allowlist):
        return None
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or not addr.is_global:
        return "a non-public address"
    return None


def resolve_public(host: str, port: int, allowlist: list[_Network]) -> str:
    """One vetted IP for host; MediaError if any address it resolves to is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaError(f"cannot resolve host {host!r}: {exc}") from None
    addrs = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for addr in addrs:
        if (why := address_refusal(addr, allowlist)) is not None:
            raise MediaError(f"refused: {host!r} resolves to {why} ({addr})")
    return str(addrs[0])


def check_public_url(url: str, allowlist: list[_Network]) -> None:
    """Raise MediaError unless url is http(s) and its host resolves only to public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise MediaError(f"refused: {url!r} is not an http(s) URL")
    resolve_public(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), allowlist)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch(url: str, max_bytes: int, timeout_s: float, allowlist: list[_Network]) -> bytes:
    """GET url following up to 5 redirects, each hop vetted; at most max_bytes; within timeout_s overall."""
    deadline = time.monotonic() + timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _fetch_once(url, max_bytes, deadline, allowlist)
        if location is None:
            if status != 200:
                raise MediaError(f"fetching {url!r} answered HTTP {status}")
            return body
        url = urljoin(url, location)
    raise MediaError(f"more than {MAX_REDIRECTS} redirects")


def _pinned(url: str, timeout_s: float, allowlist: list[_Network]) -> tuple[http.client.HTTPConnection, str]:
    """A connection to url's vetted address, and the path to request."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise MediaError(f"refused: {url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = resolve_public(parts.hostname, port, allowlist)
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(parts.hostname, port, ip, timeout=timeout_s), path


def _fetch_once(url: str, max_bytes: int, deadline: float, allowlist: list[_Network]
                ) -> tuple[int, str | None, bytes]:
    conn, path = _pinned(url, max(0.1, deadline - time.monotonic()), allowlist)
    try:
        conn.request("GET", path, headers={"User-Agent": "comfy-saas/0.1", "Accept": "*/*"})
        resp = conn.getresponse()
        if resp.status in {301, 302, 303, 307, 308} and resp.getheader("Location"):
            return resp.status, resp.getheader("Location"), b""
        return resp.status, None, _read_capped(resp, max_bytes, deadline, url)
    except (OSError, http.client.HTTPException) as exc:
        raise MediaError(f"fetching {url!r} failed: {exc}") from None
    finally:
        conn.close()


def _read_capped(resp: http.client.HTTPResponse, max_bytes: int, deadline: float, url: str) -> bytes:
    declared = resp.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaError(f"{url!r} is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    while chunk := resp.read(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise MediaError(f"{url!r} is larger than the {max_bytes} byte limit")
        if time.monotonic() > deadline:
            raise MediaError(f"fetching {url!r} took too long")
        chunks.append(chunk)
    return b"".join(chunks)


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, allowlist: list[_Network]) -> int:
    """POST body to url's vetted address (no redirects followed); the HTTP status. MediaError when refused
    or unreachable."""
    conn, path = _pinned(url, timeout_s, allowlist)
    try:
        conn.request("POST", path, body=body,
                     headers={"User-Agent": "comfy-saas/0.1", "Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        resp.read(64 * 1024)
        return resp.status
    except (OSError, http.client.HTTPException) as exc:
        raise MediaError(f"POST {url!r} failed: {exc}") from None
    finally:
        conn.close()
