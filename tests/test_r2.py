"""Object storage against R2's rules: S3Store through the R2-shaped gate (tests/r2_gate.py) in front of moto's
S3 server, over http and over https (where botocore's default checksum trailer would show up). A client
configured the way boto3 now defaults is refused, so the gate would catch a regression of S3Store's config."""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from r2_gate import MiB, R2Gate

from comfy_saas.backends.objects import PRESIGN_MAX_S, S3Store
from comfy_saas.config import R2Config
from comfy_saas.jobs import keys

DAY = datetime(2026, 11, 29, tzinfo=UTC)
CREDS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the https gate's, and the CA bundle its clients trust)."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return str(d / "cert.pem"), str(d / "key.pem")


def _start(gate: R2Gate) -> R2Gate:
    threading.Thread(target=gate.serve_forever, args=(0.02,), daemon=True).start()
    return gate


@pytest.fixture(params=["http", "https"])
def gate(request: pytest.FixtureRequest, s3_server: str, cert: tuple[str, str],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[R2Gate]:
    if request.param == "https":
        monkeypatch.setenv("AWS_CA_BUNDLE", cert[0])  # botocore trusts the gate's certificate
    g = _start(R2Gate(s3_server, tls=cert if request.param == "https" else None))
    yield g
    g.shutdown()


@pytest.fixture
def r2(gate: R2Gate, s3_server: str) -> S3Store:
    """S3Store reaching a fresh moto bucket only through the gate."""
    bucket = f"r2-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **CREDS).create_bucket(Bucket=bucket)
    return S3Store(R2Config(bucket=bucket, endpoint_url=gate.url, region="auto", access_key_id="test",
                            secret_access_key="test", multipart_threshold_bytes=5 * MiB), expiry_s=600)


def fetch(url: str, cafile: str | None = None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_single_and_multipart_uploads_and_presigned_gets_pass(r2: S3Store, gate: R2Gate, cert: tuple,
                                                              tmp_path: Path):
    small = keys.output("j1", DAY, "9", "a.png")
    assert r2.put_bytes(small, b"\x89PNG-bytes") == 10
    big, data = tmp_path / "v.mp4", os.urandom(11 * MiB)  # three parts: 5, 5 and 1 MiB
    big.write_bytes(data)
    assert r2.put_file(keys.output("j1", DAY, "9", "v.mp4"), big) == len(data)
    assert fetch(r2.url(small), cert[0]) == (200, b"\x89PNG-bytes")
    assert fetch(r2.url(keys.output("j1", DAY, "9", "v.mp4")), cert[0]) == (200, data)
    assert r2.read(small) == b"\x89PNG-bytes"
    assert gate.refusals == []


def test_prefix_deletes_pass(r2: S3Store, gate: R2Gate):
    for name in ("a.png", "b.txt"):
        r2.put_bytes(keys.output("j2", DAY, "1", name), b"x")
    r2.put_bytes(keys.output("j20", DAY, "1", "keep.png"), b"keep")
    assert r2.delete_prefix(keys.object_prefix("j2", DAY)) == 2
    assert r2.read(keys.output("j20", DAY, "1", "keep.png")) == b"keep"
    assert gate.refusals == []


def test_listings_and_reads_of_missing_objects_pass(r2: S3Store, gate: R2Gate):
    """What templates and catalogues use: a listing by prefix, and a read that may find nothing."""
    scope = keys.template_scope("alice")
    for name in ("a", "a.b"):
        r2.put_bytes(keys.template_object(scope, name), b"{}")
    assert set(r2.list_keys(scope)) == {keys.template_object(scope, "a"), keys.template_object(scope, "a.b")}
    assert r2.read_if_exists(keys.template_object(scope, "missing")) is None
    assert r2.delete_prefix(keys.template_folder(scope, "a")) == 1
    assert r2.list_keys(scope) == [keys.template_object(scope, "a.b")]
    assert gate.refusals == []


def test_presigned_urls_are_clamped_to_seven_days_and_expire(r2: S3Store, gate: R2Gate, cert: tuple):
    key = keys.output("j3", DAY, "1", "a.png")
    r2.put_bytes(key, b"img")
    url = r2.url(key, expires_s=30 * 24 * 3600)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(PRESIGN_MAX_S)]
    assert fetch(url, cert[0]) == (200, b"img")
    gate.clock = lambda: __import__("time").time() + PRESIGN_MAX_S + 60
    status, body = fetch(url, cert[0])
    assert status == 403 and b"ExpiredRequest" in body


def raw_client(gate: R2Gate, **config: object) -> object:
    return boto3.client("s3", endpoint_url=gate.url, region_name="auto", config=Config(**config), **CREDS)


def test_the_gate_refuses_boto3_defaults_that_r2_refuses(r2: S3Store, gate: R2Gate):
    default = raw_client(gate)  # boto3 >= 1.36: a CRC32 on every upload, as a trailer over https
    with pytest.raises(ClientError) as refused:
        default.put_object(Bucket=r2.bucket, Key="k", Body=b"x" * 100)
    code = refused.value.response["Error"]["Code"]
    assert code == ("Unauthorized" if gate.scheme == "https" else "NotImplemented"), gate.refusals
    week_plus = default.generate_presigned_url("get_object", Params={"Bucket": r2.bucket, "Key": "k"},
                                               ExpiresIn=PRESIGN_MAX_S + 1)
    status, body = fetch(week_plus, os.environ.get("AWS_CA_BUNDLE"))
    assert status == 400 and b"InvalidArgument" in body


def test_the_gate_refuses_unequal_multipart_parts(r2: S3Store, gate: R2Gate):
    client = raw_client(gate, request_checksum_calculation="when_required")
    upload = client.create_multipart_upload(Bucket=r2.bucket, Key="parts")["UploadId"]
    parts = [client.upload_part(Bucket=r2.bucket, Key="parts", UploadId=upload, PartNumber=n, Body=b"p" * size)
             for n, size in enumerate((6 * MiB, 5 * MiB, MiB), start=1)]
    done = {"Parts": [{"ETag": p["ETag"], "PartNumber": n} for n, p in enumerate(parts, start=1)]}
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(Bucket=r2.bucket, Key="parts", UploadId=upload, MultipartUpload=done)
    assert refused.value.response["Error"]["Code"] == "InvalidPart"


def test_the_gate_refuses_unsupported_headers_and_oversized_batches(r2: S3Store, gate: R2Gate):
    client = raw_client(gate, request_checksum_calculation="when_required")
    with pytest.raises(ClientError) as tagged:
        client.put_object(Bucket=r2.bucket, Key="t", Body=b"x", Tagging="a=b")
    assert tagged.value.response["Error"]["Code"] == "NotImplemented"
    objects = [{"Key": f"k{i}"} for i in range(1001)]
    with pytest.raises(ClientError) as batch:
        client.delete_objects(Bucket=r2.bucket, Delete={"Objects": objects, "Quiet": True})
    assert batch.value.response["Error"]["Code"] == "MalformedXML"
    assert client.list_objects_v2(Bucket=r2.bucket, MaxKeys=5000)["MaxKeys"] == 1000  # clamped, not refused
