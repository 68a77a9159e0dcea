"""Comfy API v2 assets across accounts (two user-bound keys and an operator key), and asset references resolved
into jobs that really run on the local stack."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from conftest import Server, running_server
from PIL import Image

from comfy_saas.errors import MissingAsset
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.v2.output_assets import output_assets
from comfy_saas.v2.references import resolve_references

blake3 = pytest.importorskip("blake3").blake3

A, B, OP = ({"Authorization": f"Bearer {k}"} for k in ("keyA", "keyB", "keyOp"))
ALICE, BOB = Caller(key_id="a", user_id="alice"), Caller(key_id="b", user_id="bob")


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def digest(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


def upload(server: Server, data: bytes, headers: dict, file_path: str) -> dict:
    answer = server.call("POST", "/api/v2/assets", headers, data={"content_type": "image/png", "file_path": file_path},
                         files={"file": (file_path, data, "image/png")})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("data"), api_keys="keyOp,keyA:alice,keyB:bob") as s:
        yield s


def test_assets_and_blobs_never_cross_accounts(srv: Server) -> None:
    data = png((20, 40, 60))
    mine = upload(srv, data, A, "secret.png")
    asset_path = f"/api/v2/assets/{mine['id']}"
    for method, path in [("GET", asset_path), ("GET", f"{asset_path}/content"), ("DELETE", asset_path),
                         ("HEAD", f"/api/v2/assets/by-hash/{digest(data)}")]:
        assert srv.call(method, path, B).status_code == 404, (method, path)
        assert srv.call(method, path, OP).status_code == 404, (method, path)  # the operator is an account too
    stolen = srv.call("POST", "/api/v2/assets/from-hash", B, json={"hash": digest(data), "file_path": "secret.png"})
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "blob_not_found"
    never = srv.call("POST", "/api/v2/assets/from-hash", B, json={"hash": digest(b"never uploaded")})
    assert never.json() == {**never.json(), "error": {**never.json()["error"], "code": "blob_not_found"}}
    assert never.status_code == 404  # a miss and "not yours" look the same
    theirs = upload(srv, data, B, "secret.png")
    assert theirs["created_new"] is True and theirs["hash"] == mine["hash"]  # bob's own blob, not alice's
    blobs = [k for k in srv.stack.services.objects.list_keys("assets/") if k.endswith("/data")]
    hexd = digest(data).removeprefix("blake3:")
    assert sorted(k for k in blobs if hexd in k) == [f"assets/users/alice/blobs/{hexd}/data",
                                                      f"assets/users/bob/blobs/{hexd}/data"]
    assert srv.call("DELETE", f"/api/v2/assets/{mine['id']}", A).status_code == 204
    assert srv.call("GET", f"/api/v2/assets/{theirs['id']}/content", B).content == data


def test_a_v1_client_cannot_smuggle_an_object_key(srv: Server) -> None:
    mine = upload(srv, png((1, 1, 1)), A, "private.png")
    key = f"assets/users/alice/blobs/{mine['hash'].removeprefix('blake3:')}/data"
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}}}
    for item in ({"name": "x.png", "ref": key}, {"name": "x.png", "_object_key": key},
                 {"name": "x.png", "object_key": key}, {"name": "x.png", "ref": key, "size": 10, "url": None}):
        answer = srv.call("POST", "/v1/jobs", B, json={"workflow": workflow, "media": [item]})
        assert answer.status_code == 422, (item, answer.text)
        assert answer.json()["error"]["field"].startswith("media[0]")


def _invert_workflow(image: object) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}


def _run(srv: Server, caller: Caller, headers: dict, workflow: dict) -> dict:
    svc = srv.stack.services
    resolved, media = resolve_references(svc, caller, workflow)
    view, _ = submit_job(svc, caller, {"workflow": resolved}, staged=media)
    return srv.done(view["id"], headers)


@pytest.mark.parametrize("by", ["asset", "name"])
def test_references_are_staged_into_a_job_that_runs(srv: Server, by: str) -> None:
    data = png((200, 30, 10), (12, 5))
    asset = upload(srv, data, A, f"input-{by}.png")
    ref = {"__type": "core/ASSET", "info": {"id": asset["id"], "file_path": "ignored.png"}} if by == "asset" \
        else f"input-{by}.png"
    done = _run(srv, ALICE, A, _invert_workflow(ref))
    assert done["status"] == "completed", done.get("error")
    svc = srv.stack.services
    [item] = svc.store.payload(done["id"])["media"]
    assert item == {"name": f"input-{by}.png", "ref": f"assets/users/alice/blobs/{asset['hash'][7:]}/data",
                    "size": len(data)}  # staged from the blob itself: nothing copied under the job
    [out] = output_assets(svc, svc.store.require(done["id"]))
    got = srv.call("GET", f"/api/v2/assets/{out['id']}/content", A)
    image = Image.open(io.BytesIO(got.content)).convert("RGB")
    assert image.size == (12, 5) and image.getpixel((3, 2)) == (55, 225, 245)
    assert srv.call("GET", f"/api/v2/assets/{out['id']}/content", B).status_code == 404


def test_references_to_another_accounts_assets_do_not_resolve(srv: Server) -> None:
    svc = srv.stack.services
    asset = upload(srv, png((5, 5, 5)), A, "alices.png")
    with pytest.raises(MissingAsset) as refused:
        resolve_references(svc, BOB, _invert_workflow({"__type": "core/ASSET", "info": {"id": asset["id"]}}))
    assert refused.value.details == {"asset_ids": [asset["id"]]}
    with pytest.raises(MissingAsset):
        resolve_references(svc, BOB, _invert_workflow({"__type": "core/ASSET", "info": {}}))
    with pytest.raises(MissingAsset):
        resolve_references(svc, ALICE, _invert_workflow({"__type": "core/ASSET", "info": {"id": "not-an-id"}}))
    workflow, media = resolve_references(svc, BOB, _invert_workflow("alices.png"))
    assert media == [] and workflow["1"]["inputs"]["image"] == "alices.png"  # a name bob never uploaded: untouched


def test_plain_names_are_matched_only_where_comfyui_opens_an_input_file(srv: Server) -> None:
    upload(srv, png((9, 9, 9)), A, "cat.png")
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png [input]"}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "cat.png"}},
                "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "cat.png"}}}
    resolved, media = resolve_references(srv.stack.services, ALICE, workflow)
    assert [m.name for m in media] == ["cat.png"] and resolved["1"]["inputs"]["image"] == "cat.png"
    assert resolved["2"] == workflow["2"] and resolved["3"] == workflow["3"]
