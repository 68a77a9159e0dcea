"""Comfy API v2 assets on the local server (and the S3/R2 path over moto): upload through the official SDK with
dedup, hash verification, from-hash / by-hash, content with Range, delete, and output assets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ADMIN, ALICE, BOB, Server, running_server
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from comfy_saas.backends.objects import S3Store
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Limits, Settings
from comfy_saas.jobs import keys
from comfy_saas.jobs.services import Services
from comfy_saas.v2.asset_routes import add_asset_routes
from comfy_saas.v2.output_assets import output_assets

blake3 = pytest.importorskip("blake3").blake3
comfy_sdk = pytest.importorskip("comfy_sdk")


SPEC = Path(__file__).parent / "fixtures" / "comfy-api-v2" / "openapi.yaml"


def _nullable(schema: object) -> object:
    """OpenAPI 3.0's `nullable` as JSON Schema's null type, all the way down."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def conforms(body: dict, name: str = "Asset") -> dict:
    """`body`, after checking it against the contract's schema `name`."""
    import jsonschema
    import yaml

    components = _nullable(yaml.safe_load(SPEC.read_text())["components"])
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{name}", "components": components})
    return body


def png(color: tuple[int, int, int] = (200, 30, 10), size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def digest(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


def upload(server: Server, data: bytes, headers: dict, file_path: str = "photo.png", **fields: str
           ) -> requests.Response:
    form = {"content_type": "image/png", "file_path": file_path, **fields}
    return server.call("POST", "/api/v2/assets", headers, data=form, files={"file": (file_path, data, "image/png")})


def stored(server: Server, prefix: str = "assets/") -> list[str]:
    return server.stack.services.objects.list_keys(prefix)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("data"), limits=Limits(max_asset_bytes=64 * 1024)) as s:
        yield s


@pytest.fixture
def sdk(srv: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[comfy_sdk.Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", srv.base)
    client = comfy_sdk.Comfy(api_key="alice-key")
    yield client
    client.close()


def test_the_sdk_uploads_dedups_and_downloads(srv: Server, sdk: comfy_sdk.Comfy) -> None:
    data = png((1, 2, 3))
    first = sdk.assets.from_bytes(data, filename="sdk-in.png", content_type="image/png")
    first_id = first.commit()
    again = sdk.assets.from_bytes(data, filename="sdk-in.png", content_type="image/png")
    assert again.commit() == first_id  # by-hash found the blob, from-hash returned the identical record
    assert first.hash == digest(data)
    hexd = digest(data).removeprefix("blake3:")
    assert stored(srv, f"assets/users/alice/blobs/{hexd}/") == [
        f"assets/users/alice/blobs/{hexd}/data", f"assets/users/alice/blobs/{hexd}/meta.json",
        f"assets/users/alice/blobs/{hexd}/refs/{first_id}/ref"]
    rehydrated = sdk.assets.get(first_id)
    assert (rehydrated.file_path, rehydrated.hash) == ("sdk-in.png", digest(data))
    link = again.get_download_url()  # self-hosted: the content endpoint itself, behind the key
    got = requests.get(link.url, headers=ALICE, timeout=10)
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/png"
    sdk.assets.delete(first_id)
    with pytest.raises(comfy_sdk.exceptions.NotFound):
        sdk.assets.get(first_id)
    with pytest.raises(comfy_sdk.exceptions.NotFound):
        sdk.assets.delete(first_id)


def test_a_second_upload_of_the_same_bytes_reuses_the_blob(srv: Server) -> None:
    data = png((4, 5, 6))
    one, two = upload(srv, data, ALICE, "a.png"), upload(srv, data, ALICE, "b.png")
    assert (one.status_code, two.status_code) == (201, 200)
    a, b = conforms(one.json()), conforms(two.json())
    assert (a["created_new"], b["created_new"]) == (True, False)
    assert a["id"] != b["id"] and a["hash"] == b["hash"] == digest(data) and b["size_bytes"] == len(data)
    hexd = digest(data).removeprefix("blake3:")
    assert [k for k in stored(srv) if k.endswith("/data") and hexd in k] == [f"assets/users/alice/blobs/{hexd}/data"]
    shown = conforms(srv.call("GET", f"/api/v2/assets/{b['id']}", ALICE).json())
    assert shown["file_path"] == "b.png" and requests.get(shown["url"], timeout=10).content == data


def test_a_declared_hash_that_does_not_match_stores_nothing(srv: Server) -> None:
    data = png((7, 8, 9))
    before = stored(srv)
    wrong = upload(srv, data, ALICE, "bad.png", expected_hash=digest(b"other bytes"))
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "hash_mismatch"
    assert stored(srv) == before
    assert srv.call("HEAD", f"/api/v2/assets/by-hash/{digest(data)}", ALICE).status_code == 404
    right = upload(srv, data, ALICE, "good.png", expected_hash=digest(data))
    assert right.status_code == 201 and right.json()["hash"] == digest(data)


def test_bad_uploads_are_refused_naming_the_field(srv: Server) -> None:
    no_path = srv.call("POST", "/api/v2/assets", ALICE, data={"content_type": "image/png"},
                       files={"file": ("x.png", b"abc", "image/png")})
    assert no_path.status_code == 422 and "file_path" in no_path.json()["error"]["message"]
    climbing = upload(srv, b"abc", ALICE, "../x.png")
    assert climbing.status_code == 422 and "file_path" in climbing.json()["error"]["message"]
    no_file = srv.call("POST", "/api/v2/assets", ALICE, data={"content_type": "image/png", "file_path": "x.png"},
                       files={"other": ("x.png", b"abc", "image/png")})
    assert no_file.status_code == 422 and "file" in no_file.json()["error"]["message"]
    before = stored(srv)
    too_big = upload(srv, b"\0" * (64 * 1024 + 1), ALICE, "big.bin")
    assert too_big.status_code == 413 and "65536" in too_big.json()["error"]["message"]
    assert stored(srv) == before
    assert srv.call("POST", "/api/v2/assets", {}, data={}).status_code == 401


def test_from_hash_and_by_hash(srv: Server) -> None:
    data = png((10, 11, 12))
    unknown = srv.call("POST", "/api/v2/assets/from-hash", ALICE, json={"hash": digest(data)})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "blob_not_found"
    assert srv.call("HEAD", f"/api/v2/assets/by-hash/{digest(data)}", ALICE).status_code == 404
    first = upload(srv, data, ALICE, "fh.png").json()
    assert srv.call("HEAD", f"/api/v2/assets/by-hash/{digest(data)}", ALICE).status_code == 200
    same = srv.call("POST", "/api/v2/assets/from-hash", ALICE, json={"hash": digest(data), "file_path": "fh.png"})
    assert same.status_code == 200 and same.json()["id"] == first["id"]
    other = srv.call("POST", "/api/v2/assets/from-hash", ALICE, json={"hash": digest(data), "file_path": "copy.png"})
    assert other.status_code == 201
    minted = conforms(other.json())
    assert minted["id"] != first["id"] and minted["created_new"] is False
    assert (minted["file_path"], minted["size_bytes"], minted["content_type"]) == ("copy.png", len(data), "image/png")
    assert srv.call("GET", f"/api/v2/assets/{minted['id']}/content", ALICE).content == data
    assert srv.call("POST", "/api/v2/assets/from-hash", ALICE, json={"file_path": "x"}).status_code == 422
    assert srv.call("HEAD", "/api/v2/assets/by-hash/not-a-hash", ALICE).status_code == 404


def test_content_answers_ranges(srv: Server) -> None:
    data = bytes(range(256)) * 4
    asset = srv.call("POST", "/api/v2/assets", ALICE, data={"content_type": "application/octet-stream",
                                                            "file_path": "r.bin"},
                     files={"file": ("r.bin", data, "application/octet-stream")}).json()
    path = f"/api/v2/assets/{asset['id']}/content"
    part = srv.call("GET", path, {**ALICE, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = srv.call("GET", path, {**ALICE, "Range": "bytes=-4"})
    assert tail.status_code == 206 and tail.content == data[-4:]
    beyond = srv.call("GET", path, {**ALICE, "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416


def test_delete_removes_the_record_and_the_last_one_takes_the_blob(srv: Server) -> None:
    data = png((13, 14, 15))
    hexd = digest(data).removeprefix("blake3:")
    one, two = upload(srv, data, ALICE, "d1.png").json(), upload(srv, data, ALICE, "d2.png").json()
    assert srv.call("DELETE", f"/api/v2/assets/{one['id']}", ALICE).status_code == 204
    assert srv.call("GET", f"/api/v2/assets/{one['id']}", ALICE).status_code == 404
    assert srv.call("DELETE", f"/api/v2/assets/{one['id']}", ALICE).status_code == 404
    assert srv.call("GET", f"/api/v2/assets/{two['id']}/content", ALICE).content == data  # its bytes stay
    assert srv.call("DELETE", f"/api/v2/assets/{two['id']}", ALICE).status_code == 204
    assert stored(srv, f"assets/users/alice/blobs/{hexd}/") == []
    assert stored(srv, f"assets/users/alice/records/{two['id']}/") == []
    assert srv.call("HEAD", f"/api/v2/assets/by-hash/{digest(data)}", ALICE).status_code == 404
    assert srv.call("GET", "/api/v2/assets/not-a-uuid", ALICE).status_code == 404


def test_outputs_are_assets_of_the_job(srv: Server) -> None:
    svc = srv.stack.services
    made = srv.call("POST", "/v1/jobs", ALICE, json={"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}}}})
    done = srv.done(made.json()["id"], ALICE)
    assert done["status"] == "completed"
    job = svc.store.require(done["id"])
    [listed] = output_assets(svc, job)
    assert listed == {**listed, "node_id": "2", "type": "image", "hash": None, "job_id": job.id,
                      "content_type": "image/png", "size_bytes": done["outputs"][0]["size_bytes"]}
    assert output_assets(svc, job)[0]["id"] == listed["id"]  # the same id on every read
    conforms(listed, "Output")
    shown = conforms(srv.call("GET", f"/api/v2/assets/{listed['id']}", ALICE).json())
    assert shown["job_id"] == job.id and shown["hash"] is None and shown["file_path"] == listed["name"]
    got = srv.call("GET", f"/api/v2/assets/{listed['id']}/content", ALICE)
    assert Image.open(io.BytesIO(got.content)).size == (16, 8)
    assert srv.call("GET", f"/api/v2/assets/{listed['id']}", BOB).status_code == 404
    assert srv.call("GET", f"/api/v2/assets/{listed['id']}/content", BOB).status_code == 404
    held = srv.call("DELETE", f"/api/v2/assets/{listed['id']}", ALICE)
    assert held.status_code == 409 and held.json()["error"]["code"] == "asset_in_use"
    assert srv.call("DELETE", f"/api/v2/assets/{listed['id']}", BOB).status_code == 404
    assert srv.call("GET", f"/api/v2/assets/{listed['id']}", ADMIN).status_code == 200  # operators see every job


def test_an_output_is_stored_with_its_pointer_so_reading_it_writes_nothing(srv: Server) -> None:
    svc = srv.stack.services
    made = srv.call("POST", "/v1/jobs", ALICE, json={"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 7}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}})
    [out] = srv.done(made.json()["id"], ALICE)["outputs"]  # finished and read on /v1 only
    job = svc.store.require(made.json()["id"])
    pointer = keys.output_asset(job.created_at, out["asset_id"])
    assert json.loads(svc.objects.read(pointer)) == {"job_id": job.id, "key": out["key"]}
    stored_at = svc.objects.path(pointer).stat().st_mtime_ns
    v2 = srv.call("GET", f"/api/v2/jobs/{job.id}", ALICE).json()
    assert [o["id"] for o in v2["outputs"]] == [out["asset_id"]]
    assert srv.call("GET", f"/api/v2/assets/{out['asset_id']}", ALICE).json()["job_id"] == job.id
    assert svc.objects.path(pointer).stat().st_mtime_ns == stored_at  # the reads rewrote nothing


# --- the S3/R2 store (moto) ------------------------------------------------------------------------------


@pytest.fixture
def s3_client(s3: S3Store, tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    settings = Settings(data_dir=tmp_path, api_keys="alice-key:alice, bob-key:bob", storage_backend="s3")
    svc = Services.over(LocalDict(tmp_path / "s.db"), LocalQueue(tmp_path / "s.db"), settings, s3)
    router = APIRouter()
    add_asset_routes(router, lambda: svc)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        yield client, svc


def test_on_s3_content_redirects_to_a_presigned_url_or_streams(s3_client: tuple[TestClient, Services]) -> None:
    client, svc = s3_client
    data = bytes(range(200)) * 3
    made = client.post("/api/v2/assets", headers=ALICE, data={"content_type": "application/octet-stream",
                                                              "file_path": "s3.bin", "expected_hash": digest(data)},
                       files={"file": ("s3.bin", data, "application/octet-stream")})
    assert made.status_code == 201, made.text
    asset = made.json()
    hexd = digest(data).removeprefix("blake3:")
    assert svc.objects.read(f"assets/users/alice/blobs/{hexd}/data") == data
    moved = client.get(f"/api/v2/assets/{asset['id']}/content", headers=ALICE, follow_redirects=False)
    assert moved.status_code == 302
    assert requests.get(moved.headers["location"], timeout=10).content == data
    assert requests.get(moved.headers["location"], headers={"Range": "bytes=5-9"}, timeout=10).content == data[5:10]
    streamed = client.get(f"/api/v2/assets/{asset['id']}/content?stream=true", headers={**ALICE,
                                                                                         "Range": "bytes=0-3"})
    assert streamed.status_code == 206 and streamed.content == data[:4]
    beyond = client.get(f"/api/v2/assets/{asset['id']}/content?stream=true", headers={**ALICE,
                                                                                       "Range": "bytes=9999-"})
    assert beyond.status_code == 416
    again = client.post("/api/v2/assets/from-hash", headers=ALICE, json={"hash": digest(data), "file_path": "t.bin"})
    assert again.status_code == 201
    assert client.head(f"/api/v2/assets/by-hash/{digest(data)}", headers=BOB).status_code == 404
    assert client.delete(f"/api/v2/assets/{asset['id']}", headers=ALICE).status_code == 204
    assert client.delete(f"/api/v2/assets/{again.json()['id']}", headers=ALICE).status_code == 204
    assert svc.objects.list_keys("assets/") == []


def test_a_cut_or_broken_multipart_body_is_refused(srv: Server) -> None:
    boundary = "xyzzy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"content_type\"\r\n\r\nimage/png\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file_path\"\r\n\r\ncut.png\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.png\"\r\n\r\n").encode()
    before = stored(srv)
    headers = {**ALICE, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    cut = srv.call("POST", "/api/v2/assets", headers, data=head + b"partial bytes")
    assert cut.status_code == 422 and "closing boundary" in cut.json()["error"]["message"]
    whole = srv.call("POST", "/api/v2/assets", headers, data=head + f"ok\r\n--{boundary}--\r\n".encode())
    assert whole.status_code == 201 and whole.json()["size_bytes"] == 2
    broken = srv.call("POST", "/api/v2/assets", headers, data=b"no boundary here at all\r\n")
    assert broken.status_code == 422
    not_multipart = srv.call("POST", "/api/v2/assets", ALICE, json={"file": "x"})
    assert not_multipart.status_code == 422 and "multipart" in not_multipart.json()["error"]["message"]
    assert len(stored(srv)) == len(before) + 5  # the whole one: data, meta, ref, record, name entry
