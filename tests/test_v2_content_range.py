"""Range on GET /api/v2/assets/{id}/content, locally and streamed from S3/R2: one valid bytes range is a 206, a
header that is not one (RFC 9110 lets a server ignore it) gets the whole content, and a range outside the
content is a 416 in the contract's envelope with `Content-Range: bytes */size`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALICE, Server, running_server
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from comfy_saas.backends.objects import S3Store
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.jobs.services import Services
from comfy_saas.v2.asset_routes import add_asset_routes

DATA = bytes(range(256)) * 4
IGNORED = ["bytes=x", "bytes=5-3", "bytes=0-1,4-5", "items=0-3", "bytes=-", "bytes 0-3"]
FORM = {"content_type": "application/octet-stream", "file_path": "r.bin"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("ranges")) as s:
        yield s


def check_416(status: int, headers: dict, body: dict) -> None:
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(DATA)}"
    assert headers["content-type"].startswith("application/json")
    assert body["error"]["code"] == "range_not_satisfiable" and body["error"]["details"] == {"size_bytes": len(DATA)}


def test_local_content_honours_one_range_and_ignores_invalid_ones(srv: Server) -> None:
    asset = srv.call("POST", "/api/v2/assets", ALICE, data=FORM, files={"file": ("r.bin", DATA)}).json()
    path = f"/api/v2/assets/{asset['id']}/content"
    part = srv.call("GET", path, {**ALICE, "Range": "bytes=10-2000"})
    assert (part.status_code, part.content) == (206, DATA[10:])
    assert part.headers["content-range"] == f"bytes 10-{len(DATA) - 1}/{len(DATA)}"
    for header in IGNORED:
        whole = srv.call("GET", path, {**ALICE, "Range": header})
        assert (whole.status_code, whole.content) == (200, DATA), header
    for header in (f"bytes={len(DATA)}-", "bytes=-0", f"bytes={10**18}-{10**18 + 1}"):
        beyond = srv.call("GET", path, {**ALICE, "Range": header})
        check_416(beyond.status_code, beyond.headers, beyond.json())


@pytest.fixture
def s3_client(s3: S3Store, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, api_keys="alice-key:alice", storage_backend="s3")
    svc = Services.over(LocalDict(tmp_path / "s.db"), LocalQueue(tmp_path / "s.db"), settings, s3)
    router = APIRouter()
    add_asset_routes(router, lambda: svc)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        yield client


def test_streamed_content_passes_only_a_valid_range_on(s3_client: TestClient) -> None:
    asset = s3_client.post("/api/v2/assets", headers=ALICE, data=FORM, files={"file": ("r.bin", DATA)}).json()
    path = f"/api/v2/assets/{asset['id']}/content?stream=true"
    part = s3_client.get(path, headers={**ALICE, "Range": "bytes=-4"})
    assert (part.status_code, part.content) == (206, DATA[-4:])
    for header in IGNORED:
        whole = s3_client.get(path, headers={**ALICE, "Range": header})
        assert (whole.status_code, whole.content) == (200, DATA), header
    beyond = s3_client.get(path, headers={**ALICE, "Range": f"bytes={len(DATA)}-"})
    check_416(beyond.status_code, beyond.headers, beyond.json())
