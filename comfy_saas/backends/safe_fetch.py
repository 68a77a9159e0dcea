"""Fetching a URL a client gave us without letting it reach inside our network (SSRF).

Every hop (the first URL and each redirect) is resolved once; every address it resolves to must be
public, and the connection goes to that vetted address, so DNS rebinding cannot swap it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from comfy_saas.errors import MediaError

MAX_REDIRECTS = 5
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Not public, yet not flagged by every Python's ipaddress: IETF protocol assignments, the deprecated 6to4
# relay anycast, IPv6 site-local (deprecated, still routed inside some networks), local-use NAT64.
_NEVER_PUBLIC = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "fec0::/10",
                                                    "64:ff9b:1::/48")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RESOLVERS = ThreadPoolExecutor(16, thread_name_prefix="url-check")  # bounded: a slow DNS cannot pile up threads


def parse_allowlist(spec: str) -> list[_Network]:
    """'127.0.0.1/32, 10.1.0.0/16' -> networks a URL may reach although they are not public."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip()]


def embedded_ipv4(addr: _Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and that a packet to it may reach: v4-mapped,
    v4-compatible, 6to4 (2002::/16), Teredo (2001::/32, server and client) and NAT64 (64:ff9b::/96)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    found += list(addr.teredo or ())
    if addr in _NAT64 or (int(addr) >> 32 == 0 and int(addr) > 1):  # NAT64 and ::a.b.c.d
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def address_refusal(addr: _Address, allowlist: list[_Network]) -> str | None:
    """Why `addr` may not be reached, or None when it may. An IPv6 address that carries an IPv4 one is
    judged by the IPv4 address too, so 2002:7f00:1:: is as loopback as 127.0.0.1."""
    inner = embedded_ipv4(addr)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # the mapped form is the same host: the allowlist applies to it
    if any(addr in net for net in allowlist):
        return None
    for v4 in inner:
        if v4 != addr and (why := address_refusal(v4, allowlist)) is not None:
            return f"{why} inside an IPv6 address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or not addr.is_global \
            or any(addr in net for net in _NEVER_PUBLIC if net.version == addr.version):
        return "a non-public address"
    return None


def _port(parts) -> int:
    """The URL's port (or its scheme's default); MediaError for a port that is not 1-65535."""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise MediaError("refused: the URL's port must be a whole number from 1 to 65535")
    return port or (443 if parts.scheme == "https" else 80)


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
        raise MediaError(f"refused: {url[:100]!r} is not an http(s) URL")
    resolve_public(parts.hostname, _port(parts), allowlist)


def check_public_urls(urls: list[str], allowlist: list[_Network], timeout_s: float) -> list[str | None]:
    """For each URL, why it is refused (None when it may be fetched). The hosts are resolved concurrently,
    each host once, all within timeout_s together; a host that has not resolved by then is refused."""
    def check(url: str) -> str | None:
        try:
            check_public_url(url, allowlist)
            return None
        except MediaError as exc:
            return exc.message

    distinct = list(dict.fromkeys(urls))
    futures = {url: _RESOLVERS.submit(check, url) for url in distinct}
    wait(futures.values(), timeout=timeout_s)
    late = f"its host did not resolve within {timeout_s:g}s"
    verdicts = {url: f.result() if f.done() else late for url, f in futures.items()}
    return [verdicts[url] for url in urls]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = self.opened = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self.opened = self._context.wrap_socket(sock, server_hostname=self.host)


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
        raise MediaError(f"refused: {url[:100]!r} is not an http(s) URL")
    port = _port(parts)
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


# --- large files: streamed to disk, hashed on the way, resumed after a drop -------------------------

_CHUNK = 1024 * 1024
_READ_TIMEOUT_S = 60.0  # a socket silent this long counts as dropped (and is resumed)


@dataclass
class Downloaded:
    """A finished download: the file's size and sha256, and the bytes that crossed the network."""

    size: int
    sha256: str
    transferred: int


class _Dropped(Exception):
    """The connection broke off: retry, resuming with Range where the server allows it."""


class Interrupt:
    """Lets another thread break off a download, even one blocked reading a stalled connection."""

    def __init__(self) -> None:
        self.fired = False
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def attach(self, conn: http.client.HTTPConnection | None) -> None:
        with self._lock:
            self._conn = conn
        if conn is not None and self.fired:
            self.fire()

    def fire(self) -> None:
        """Stop the download: its read fails now, and it ends with MediaError('interrupted')."""
        with self._lock:
            self.fired = True
            # The socket as opened: http.client hands it to the response and forgets it on `Connection: close`.
            sock = getattr(self._conn, "opened", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Sink:
    """The file being written, its running hash, and what the server said about resuming."""

    def __init__(self, dest: Path, max_bytes: int, url: str, on_progress: Callable[[int, int | None], None] | None
                 ) -> None:
        self.dest, self.max_bytes, self.url, self.on_progress = dest, max_bytes, url, on_progress
        self.out = open(dest, "wb")  # noqa: SIM115 - closed by close()
        self.hash, self.size, self.transferred = hashlib.sha256(), 0, 0
        self.total: int | None = None
        self.resumable, self.validator = False, ""

    def start(self, resp: http.client.HTTPResponse) -> None:
        """Take a response's headers: continue a range, or start over on a full body."""
        if resp.status == 206 and self.size and _range_start(resp.getheader("Content-Range", "")) == self.size:
            self.total = _range_total(resp.getheader("Content-Range", ""))
        elif resp.status == 200:
            self._restart(resp)
        else:
            raise MediaError(f"fetching {self.url!r} answered HTTP {resp.status}")
        if self.total is not None and self.total > self.max_bytes:
            raise MediaError(f"{self.url!r} is {self.total} bytes; the limit is {self.max_bytes}")

    def _restart(self, resp: http.client.HTTPResponse) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.hash, self.size = hashlib.sha256(), 0
        declared = resp.getheader("Content-Length", "")
        self.total = int(declared) if declared.isdigit() else None
        self.resumable = resp.getheader("Accept-Ranges", "").lower() == "bytes"
        etag = resp.getheader("ETag", "")
        self.validator = etag if etag and not etag.startswith("W/") else resp.getheader("Last-Modified", "")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.transferred += len(chunk)
        if self.size > self.max_bytes:
            raise MediaError(f"{self.url!r} is larger than the {self.max_bytes} byte limit")
        self.out.write(chunk)
        self.hash.update(chunk)
        if self.on_progress is not None:
            self.on_progress(self.size, self.total)

    def resume_headers(self) -> dict[str, str]:
        if not self.size or not self.resumable:
            return {}  # a server without ranges sends the whole body again
        return {"Range": f"bytes={self.size}-", **({"If-Range": self.validator} if self.validator else {})}


def _range_start(content_range: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
    return int(m.group(1)) if m else None


def _range_total(content_range: str) -> int | None:
    m = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    return int(m.group(1)) if m else None


def download(url: str, dest: Path, max_bytes: int, timeout_s: float, allowlist: list[_Network],
             headers_for: Callable[[str], dict[str, str]] | None = None,
             on_progress: Callable[[int, int | None], None] | None = None, retries: int = 3,
             interrupt: Interrupt | None = None) -> Downloaded:
    """GET url into dest (never whole in memory), every hop vetted like `fetch`; `headers_for(hop_url)` adds
    headers per hop, so a credential only reaches the hosts it names, redirects included. A dropped
    connection is resumed with Range when the server supports it (else fetched again). `interrupt.fire()`
    from another thread ends it. On any failure dest is removed."""
    deadline = time.monotonic() + timeout_s
    sink = _Sink(dest, max_bytes, url, on_progress)
    interrupt = interrupt or Interrupt()
    try:
        for attempt in range(retries + 1):
            try:
                _stream(url, sink, deadline, allowlist, headers_for, interrupt)
                return Downloaded(sink.size, sink.hash.hexdigest(), sink.transferred)
            except _Dropped as exc:
                if interrupt.fired:
                    raise MediaError(f"fetching {url!r} was interrupted") from None
                if attempt == retries or time.monotonic() > deadline:
                    raise MediaError(f"fetching {url!r} failed: {exc}") from None
        raise AssertionError("unreachable")
    except BaseException:
        sink.out.close()
        dest.unlink(missing_ok=True)
        raise
    finally:
        sink.out.close()


def _stream(url: str, sink: _Sink, deadline: float, allowlist: list[_Network],
            headers_for: Callable[[str], dict[str, str]] | None, interrupt: Interrupt) -> None:
    conn, resp = _open_following(url, sink.resume_headers(), deadline, allowlist, headers_for)
    interrupt.attach(conn)
    try:
        sink.start(resp)
        while chunk := resp.read1(_CHUNK):  # whatever has arrived: progress moves on slow links too
            sink.write(chunk)
            if time.monotonic() > deadline:
                raise MediaError(f"fetching {url!r} took too long")
        if sink.total is not None and sink.size != sink.total:
            raise _Dropped(f"the body ended after {sink.size} of {sink.total} bytes")
    except (OSError, http.client.HTTPException) as exc:
        raise _Dropped(str(exc) or type(exc).__name__) from None
    finally:
        interrupt.attach(None)
        conn.close()


def _open_following(url: str, headers: dict[str, str], deadline: float, allowlist: list[_Network],
                    headers_for: Callable[[str], dict[str, str]] | None
                    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The response at the end of url's redirects, each hop vetted and given only its own extra headers."""
    for _ in range(MAX_REDIRECTS + 1):
        conn, path = _pinned(url, min(_READ_TIMEOUT_S, max(0.1, deadline - time.monotonic())), allowlist)
        try:
            conn.request("GET", path, headers={"User-Agent": "comfy-saas/0.1", "Accept": "*/*", **headers,
                                               **(headers_for(url) if headers_for else {})})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Dropped(str(exc) or type(exc).__name__) from None
        if resp.status in {301, 302, 303, 307, 308} and resp.getheader("Location"):
            conn.close()
            url = urljoin(url, resp.getheader("Location"))
            continue
        return conn, resp
    raise MediaError(f"more than {MAX_REDIRECTS} redirects")
