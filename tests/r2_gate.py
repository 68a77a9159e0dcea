"""An R2-shaped gate: a reverse proxy in front of moto's S3 server that refuses what Cloudflare R2 refuses, with
R2's status codes and S3's XML error body. moto accepts all of it (checksum trailers, aws-chunked bodies,
unequal multipart parts, week-long presigned URLs...), so without the gate the tests could not see a client
that R2 would turn away. The rules and their sources are in /work/notes/r2.md; each refusal is recorded in
`gate.refusals` as (code, reason).

    gate = R2Gate(moto_url)            # plain http; R2Gate(moto_url, tls=(cert, key)) for https
    threading.Thread(target=gate.serve_forever, daemon=True).start()
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import ssl
import threading
import time
import zlib
from calendar import timegm
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MiB = 1024 * 1024
PRESIGN_MAX_S = 7 * 24 * 3600
PART_MIN, PART_MAX, PARTS_MAX = 5 * MiB, 5 * 1024 * MiB, 10_000
PUT_MAX = 5 * 1024 * MiB - 5 * MiB
REGIONS = {"auto", "us-east-1", ""}
UNSUPPORTED_HEADERS = re.compile(r"^(x-amz-tagging|x-amz-acl|x-amz-grant-.*|x-amz-object-lock-.*|"
                                 r"x-amz-website-redirect-location|x-amz-request-payer|x-amz-expected-bucket-owner)$")
UNSUPPORTED_OPS = ("tagging", "acl", "policy", "versioning", "notification", "replication")
CHECKSUM_ALGORITHM = ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm")
# botocore always sends a CRC32 checksum with these; R2 takes it (DeleteObjects, lifecycle rules).
CHECKSUMS_ALLOWED = ("DeleteObjects", "PutBucketLifecycleConfiguration")


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Request:
    """One S3 request as the gate sees it (path-style addressing: /bucket/key)."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        parts = urlsplit(target)
        self.method, self.path, self.body = method, parts.path, body
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = {k.lower(): v for k, v in headers.items()}
        bucket, _, key = parts.path.lstrip("/").partition("/")
        self.bucket, self.key = bucket, unquote(key)
        self.op = self._operation()

    def _operation(self) -> str:
        q, m = self.query, self.method
        if not self.key:
            if m == "POST" and "delete" in q:
                return "DeleteObjects"
            if m == "PUT" and "lifecycle" in q:
                return "PutBucketLifecycleConfiguration"
            return "ListObjectsV2" if m == "GET" and q.get("list-type") == "2" else f"Bucket{m.title()}"
        if m == "PUT":
            if "partNumber" in q:
                return "UploadPart"
            return "CopyObject" if "x-amz-copy-source" in self.headers else "PutObject"
        if m == "POST":
            return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(m, m)


def check_transport(req: Request) -> None:
    """Rules 1, 2, 10, 11: no aws-chunked or streaming signatures, a Content-Length on PUT, SigV4 in R2's region."""
    h = req.headers
    chunked = "aws-chunked" in h.get("content-encoding", "") or h.get("x-amz-content-sha256", "").startswith(
        "STREAMING-") or "x-amz-trailer" in h or "x-amz-decoded-content-length" in h
    if chunked:
        raise Refused(401, "Unauthorized", "aws-chunked / streaming payloads (checksum trailers) are not supported")
    if req.method == "PUT" and "content-length" not in h:
        raise Refused(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    auth = h.get("authorization", "")
    if auth.startswith("AWS ") or ("Signature" in req.query and "AWSAccessKeyId" in req.query):
        raise Refused(401, "Unauthorized", "SigV2 authorization is not supported. Please use SigV4 instead.")
    credential = req.query.get("X-Amz-Credential") or (re.search(r"Credential=([^,]+)", auth) or [None, ""])[1]
    region = credential.split("/")[2] if credential.count("/") >= 4 else ""
    if region not in REGIONS:
        raise Refused(400, "AuthorizationHeaderMalformed", f"region {region!r} is wrong; expecting 'auto'")


def check_presign(req: Request, now: float) -> None:
    """Rules 7, 8, 9: presigned URLs live at most 7 days, expire, and carry no checksum parameters."""
    q = req.query
    if "X-Amz-Expires" not in q:
        return
    expires = int(q["X-Amz-Expires"])
    if expires > PRESIGN_MAX_S:
        raise Refused(400, "InvalidArgument", "X-Amz-Expires must be less than a week (in seconds); that is, the "
                                              "given X-Amz-Expires must be less than 604800 seconds")
    signed = timegm(time.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    if now > signed + expires:
        raise Refused(403, "ExpiredRequest", "Request has expired")
    if any(k.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum")) for k in q):
        raise Refused(400, "BadDigest", "presigned URLs may not carry checksum parameters")


def check_headers(req: Request) -> None:
    """Rules 3-6, 12, 13: checksum headers only where R2 takes them, no unsupported headers or operations."""
    h = req.headers
    for name in h:
        if UNSUPPORTED_HEADERS.match(name) or (name == "x-amz-server-side-encryption"):
            raise Refused(501, "NotImplemented", f"Header '{name}' with value '{h[name]}' not implemented")
    for op in UNSUPPORTED_OPS:
        if op in req.query:
            raise Refused(501, "NotImplemented", f"{op} not implemented")
    if req.method == "POST" and not req.key and "multipart/form-data" in h.get("content-type", ""):
        raise Refused(501, "NotImplemented", "POST object (form upload) not implemented")
    checksums = [n for n in h if n.startswith("x-amz-checksum-") or n in CHECKSUM_ALGORITHM]
    if checksums and req.op not in CHECKSUMS_ALLOWED:
        name = checksums[0]
        raise Refused(501, "NotImplemented", f"Header '{name}' with value '{h[name]}' not implemented")
    if "content-md5" in h and any(n.startswith("x-amz-checksum-") for n in h):
        raise Refused(400, "InvalidRequest", "You can only specify one non-default checksum at a time.")
    check_digests(req)


def check_digests(req: Request) -> None:
    """Rule 6: every digest sent must match the body."""
    h, body = req.headers, req.body
    digests = {"content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
               "x-amz-checksum-crc32": base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()}
    for name, expected in digests.items():
        if name in h and h[name] != expected:
            raise Refused(400, "BadDigest", f"The {name} you specified did not match what we received.")
    sha = h.get("x-amz-content-sha256", "")
    if re.fullmatch(r"[0-9a-f]{64}", sha) and sha != hashlib.sha256(body).hexdigest():
        raise Refused(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match")


def check_limits(req: Request) -> None:
    """Rules 15-18: key length, object and part sizes, part numbers, DeleteObjects batch size."""
    if len(req.key.encode()) > 1024:
        raise Refused(400, "InvalidObjectName", "The specified object name is not valid.")
    if req.op == "PutObject" and len(req.body) > PUT_MAX:
        raise Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.")
    if req.op == "UploadPart":
        number = int(req.query.get("partNumber", "0"))
        if not 1 <= number <= PARTS_MAX:
            raise Refused(400, "InvalidArgument", f"Part number must be an integer between 1 and {PARTS_MAX}")
        if len(req.body) > PART_MAX:
            raise Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.")
    if req.op == "DeleteObjects" and req.body.count(b"<Object>") > 1000:
        raise Refused(400, "MalformedXML", "The XML you provided was not well-formed (more than 1000 keys)")


def check_parts(sizes: dict[int, int]) -> None:
    """Rule 14: every part but the last the same size (at least 5 MiB), the last no larger."""
    ordered = [sizes[n] for n in sorted(sizes)]
    if len(ordered) < 2:
        return
    leading, last = ordered[:-1], ordered[-1]
    if any(size < PART_MIN for size in leading):
        raise Refused(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
    if any(size != leading[0] for size in leading) or last > leading[0]:
        raise Refused(400, "InvalidPart", "All non-trailing parts must have the same length.")


class R2Gate(ThreadingHTTPServer):
    """The gate on a free loopback port; `clock` may be moved forward to expire presigned URLs."""

    daemon_threads = True

    def __init__(self, upstream: str, tls: tuple[str, str] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.refusals: list[tuple[str, str]] = []
        self.parts: dict[str, dict[int, int]] = {}  # uploadId -> {part number: size}
        self.lock = threading.Lock()
        self.clock = time.time
        self.scheme = "https" if tls else "http"
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def judge(self, req: Request) -> None:
        """Raise Refused for what R2 would refuse; remember part sizes; clamp listing pages (rule 19)."""
        check_transport(req)
        check_presign(req, self.clock())
        check_headers(req)
        check_limits(req)
        if req.op == "CompleteMultipartUpload":
            with self.lock:
                check_parts(self.parts.pop(req.query.get("uploadId", ""), {}))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: R2Gate

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes | None:
        """The body as sent; None for a chunked one (read to its end all the same, so the client, still
        sending, gets the refusal rather than a connection reset)."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            self.rfile.read(size + 2)  # the chunk and its CRLF
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers (aws-chunked checksums)
            pass
        return None

    def _serve(self) -> None:
        body = self._body()
        req = Request(self.command, self.path, dict(self.headers), body or b"")
        try:
            self.server.judge(req)  # an aws-chunked body is refused as such before its missing length
            if body is None:
                raise Refused(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        except Refused as refused:
            self.server.refusals.append((refused.code, refused.message))
            return self._reply(refused.status, {"Content-Type": "application/xml"}, _xml(refused))
        status, headers, answer = self._forward(req)
        if req.op == "UploadPart" and status == 200:
            with self.server.lock:
                self.server.parts.setdefault(req.query["uploadId"], {})[int(req.query["partNumber"])] = len(body)
        self._reply(status, headers, answer)

    def _forward(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        target = self.path
        if req.op == "ListObjectsV2" and int(req.query.get("max-keys", "1000")) > 1000:
            target = req.path + "?" + urlencode({**req.query, "max-keys": "1000"})
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        skip = {"host", "expect", "connection", "transfer-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        try:
            conn.request(self.command, target, body=req.body if self.command != "GET" else None, headers=headers)
            resp = conn.getresponse()
            relayed = {k: v for k, v in resp.getheaders() if k.lower() not in {"transfer-encoding", "connection"}}
            return resp.status, relayed, resp.read()
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        length = str(len(body))
        for k, v in headers.items():
            if k.lower() == "content-length":
                length = v if self.command == "HEAD" else length  # a HEAD answer tells the object's size
            else:
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve


def _xml(refused: Refused) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{refused.code}</Code>'
            f"<Message>{refused.message}</Message></Error>").encode()
