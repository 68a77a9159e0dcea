"""The native API under hostile or careless clients: what /view serves, malformed uploads, caps, socket limits,
retries and the shapes ComfyUI's tools rely on (extra_data, failed outputs, paging)."""

from __future__ import annotations

import io
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ALICE, BOB, running_server, wait_until
from PIL import Image

from comfy_saas.config.settings import Limits

MEDIA_CAP = 256 * 1024
EMPTY = {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}}
GRAPH = {"1": EMPTY, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "h"}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(tmp_path_factory.mktemp("hardening"), limits=Limits(max_media_bytes=MEDIA_CAP)) as srv:
        wait_until(lambda: srv.call("GET", "/object_info", ALICE).status_code == 200, 30, "the node catalogue")
        yield srv


def _png(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, format="PNG")
    return out.getvalue()


def upload(server, name: str, data: bytes, headers: dict = ALICE, path: str = "/upload/image",
           **fields: str) -> requests.Response:
    return server.call("POST", path, headers, files={"image": (name, data)}, data=fields)


def finished(server, prompt_id: str) -> dict:
    return server.done(prompt_id)


# --- 1: uploads never run as pages on the API origin ----------------------------------------------------------

@pytest.mark.parametrize("name", ["p.html", "s.svg", "x.xhtml"])
def test_view_of_an_uploaded_document_is_a_sandboxed_download(server, name: str) -> None:
    body = b"<html><script>alert(document.cookie)</script></html>"
    if name.endswith(".svg"):
        body = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    stored = upload(server, name, body)
    assert stored.status_code == 200, stored.text
    got = server.call("GET", f"/view?filename={stored.json()['name']}&type=input", ALICE)
    assert got.status_code == 200 and got.content == body
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment")
    assert got.headers["content-security-policy"] == "sandbox"
    assert got.headers["x-content-type-options"] == "nosniff"


def test_view_of_an_image_stays_inline(server) -> None:
    stored = upload(server, "ok.png", _png())
    got = server.call("GET", f"/view?filename={stored.json()['name']}&type=input", ALICE)
    assert got.headers["content-type"] == "image/png" and got.headers["content-disposition"].startswith("inline")
    assert got.headers["content-security-policy"] == "sandbox"


# --- 2: malformed uploads get a 4xx naming the field -------------------------------------------------------------

def test_multipart_without_boundary_is_a_422(server) -> None:
    got = server.call("POST", "/upload/image", {**ALICE, "Content-Type": "multipart/form-data"}, data=b"abc")
    assert got.status_code == 422 and got.json()["error"]["field"] == "image"


@pytest.mark.parametrize(("ref", "mask", "field"), [
    (None, b"not an image", "image"),
    ('{"filename": 5}', None, "original_ref"),
    ('["a"]', None, "original_ref"),
    ('{"filename": "ok.png", "subfolder": 3}', None, "original_ref"),
])
def test_bad_masks_and_refs_are_422s(server, ref: str | None, mask: bytes | None, field: str) -> None:
    original = upload(server, "base.png", _png()).json()
    ref = ref or json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    got = upload(server, "m.png", mask or _png(), path="/upload/mask", original_ref=ref)
    assert got.status_code == 422, got.text
    assert got.json()["error"]["field"] == field


def test_an_original_that_is_not_an_image_is_a_422(server) -> None:
    original = upload(server, "notimage.png", b"plain text").json()
    ref = json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    got = upload(server, "m.png", _png(), path="/upload/mask", original_ref=ref)
    assert got.status_code == 422 and got.json()["error"]["field"] == "original_ref"


# --- 3: the upload cap is a 413 naming the advertised size, enforced as the body streams ----------------------

def test_an_upload_over_the_cap_is_a_413_naming_max_upload_size(server) -> None:
    advertised = server.call("GET", "/features", ALICE).json()["max_upload_size"]
    assert advertised == MEDIA_CAP
    got = upload(server, "big.png", b"\0" * (MEDIA_CAP + 1))
    assert got.status_code == 413 and str(MEDIA_CAP) in got.json()["error"]["message"]
    assert upload(server, "fits.png", b"\0" * MEDIA_CAP).status_code == 200


def _chunked_upload(server, total: int) -> bytes:
    """A chunked multipart upload (no Content-Length) of `total` file bytes; the server's answer."""
    url = urlsplit(server.base)
    head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(b"POST /upload/image HTTP/1.1\r\nHost: x\r\nAuthorization: " + ALICE["Authorization"].encode()
                     + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = 64 * 1024
        try:
            conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(total // chunk):
                conn.sendall(b"%x\r\n%s\r\n" % (chunk, b"\0" * chunk))
            conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the whole body was sent
        return conn.recv(4096)


def test_a_chunked_upload_is_cut_off_at_the_cap(server) -> None:
    answer = _chunked_upload(server, 8 * MEDIA_CAP)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    names = server.call("GET", "/object_info/LoadImage", ALICE).json()
    assert "c.png" not in json.dumps(names)


# --- 6: a prompt without client_id is told to its submitter's sockets, and only theirs --------------------------

def _socket(server, client_id: str, key: str) -> Any:
    import websocket

    ws = websocket.create_connection(f"{server.base.replace('http://', 'ws://')}/ws?clientId={client_id}&token={key}",
                                     timeout=10)
    assert json.loads(ws.recv())["type"] == "status"
    return ws


def _until_done(ws: Any, prompt_id: str) -> list[dict]:
    seen: list[dict] = []
    while True:
        raw = ws.recv()
        seen.append(json.loads(raw) if isinstance(raw, str) else {"type": "binary", "data": {}})
        last = seen[-1]
        if last["type"] == "executing" and last["data"]["node"] is None and last["data"]["prompt_id"] == prompt_id:
            return seen


def test_a_prompt_without_client_id_reaches_only_its_owners_sockets(server) -> None:
    alices, bobs = _socket(server, "a1", "alice-key"), _socket(server, "b1", "bob-key")
    try:
        mine = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH}).json()["prompt_id"]
        heard = _until_done(alices, mine)
        theirs = server.call("POST", "/prompt", BOB, json={"prompt": GRAPH}).json()["prompt_id"]
        bob_heard = _until_done(bobs, theirs)
    finally:
        alices.close()
        bobs.close()
    assert [m["type"] for m in heard if m["data"].get("prompt_id") == mine][-2:] == ["execution_success", "executing"]
    assert mine not in json.dumps(bob_heard)


# --- 18: a failed prompt's history keeps the outputs its nodes wrote ------------------------------------------

def test_a_failed_prompt_keeps_its_written_outputs_in_history(server) -> None:
    """Here a worker's attempt is played by the test: it wrote node 2's image, then the prompt failed."""
    from comfy_saas.jobs.model import Output, Status

    prompt_id = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": {"pool": "idle"}}
                            ).json()["prompt_id"]
    store = server.stack.services.store
    running = store.transition(store.get(prompt_id), Status.RUNNING, "test")
    out = Output(node_id="2", kind="image", filename="h_00001_.png", key=f"jobs/{prompt_id}/h.png",
                 content_type="image/png", size_bytes=3)
    store.transition(running, Status.FAILED, "test", outputs=[out])
    entry = server.call("GET", f"/history/{prompt_id}", ALICE).json()[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["outputs"]["2"]["images"] == [{"filename": "h_00001_.png", "subfolder": f"{prompt_id}/2",
                                                "type": "output"}]


# --- 23, 24: how the key is presented, and which paths take prefixes ------------------------------------------

def test_a_useless_authorization_header_does_not_hide_the_token(server) -> None:
    import base64

    for header in ("Basic !!!", "Digest abc", "Basic " + base64.b64encode(b"user:").decode()):
        got = server.call("GET", "/prompt?token=alice-key", {"Authorization": header})
        assert got.status_code == 200, header
    alone = "Basic " + base64.b64encode(b"alice-key").decode()  # the key as the whole credential
    assert server.call("GET", "/prompt", {"Authorization": alone}).status_code == 200


def test_prefixes_apply_only_to_native_paths(server) -> None:
    assert server.call("GET", "/k/alice-key/prompt", {}).status_code == 200
    assert server.call("GET", "/k/alice-key/p/default/api/queue", {}).status_code == 200
    for path in ("/k/alice-key/docs", "/k/alice-key/v1/jobs", "/p/x/v1/jobs", "/k/alice-key/api/v2/jobs"):
        assert server.call("GET", path, {}).status_code == 404, path


# --- 13: a retry racing the first submission of a prompt_id neither double-submits nor drops its record --------

def test_a_retry_while_the_first_submission_is_under_way_is_a_409_and_keeps_the_claim(server) -> None:
    from comfy_saas.jobs import keys
    from comfy_saas.native import records

    svc = server.stack.services
    prompt_id = str(uuid.uuid4())
    assert records.claim(svc, prompt_id, "user/alice", None, 1)  # the first request, between claim and submit
    retry = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "prompt_id": prompt_id})
    assert retry.status_code == 409 and retry.json()["error"]["type"] == "conflict"
    assert not svc.store.exists(prompt_id)
    assert svc.store.d.get(keys.native_prompt(prompt_id))["owner"] == "user/alice"
    other = server.call("POST", "/prompt", BOB, json={"prompt": GRAPH, "prompt_id": prompt_id})
    assert other.status_code == 400 and other.json()["error"]["type"] == "invalid_prompt_id"


# --- 7: extra_data comes back in history, the queue and /api/jobs ----------------------------------------------

def test_extra_data_is_kept_for_history_queue_and_jobs(server) -> None:
    pnginfo = {"workflow": {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}}
    sent = {"extra_pnginfo": pnginfo, "client_id": "cx"}
    done_id = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": sent}).json()["prompt_id"]
    assert finished(server, done_id)["status"] == "completed"
    extra = server.call("GET", f"/history/{done_id}", ALICE).json()[done_id]["prompt"][3]
    assert extra["extra_pnginfo"] == pnginfo and extra["client_id"] == "cx" and extra["create_time"] > 0
    detail = server.call("GET", f"/api/jobs/{done_id}", ALICE).json()
    assert detail["workflow"]["extra_data"]["extra_pnginfo"] == pnginfo
    waiting = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": {
        "pool": "idle", "extra_pnginfo": pnginfo}}).json()["prompt_id"]
    pending = server.call("GET", "/queue", ALICE).json()["queue_pending"]
    assert next(i for i in pending if i[1] == waiting)[3]["extra_pnginfo"] == pnginfo
    server.call("POST", "/queue", ALICE, json={"delete": [waiting]})


def test_extra_pnginfo_and_a_partner_key_reach_comfyui_and_the_key_is_never_shown(server) -> None:
    # A big editor graph, so it travels through object storage rather than the payload's Dict entry.
    pnginfo = {"workflow": {"nodes": [{"id": n, "type": "EmptyImage"} for n in range(200)], "links": []}}
    secret = "partner-key-5e6f7a8b"
    sent = {"extra_pnginfo": pnginfo, "api_key_comfy_org": secret}
    done_id = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": sent}).json()["prompt_id"]
    assert finished(server, done_id)["status"] == "completed"
    comfy = requests.get(server.stack.workers[0].comfy.base_url + "/history", timeout=10).json()
    given = next(entry["prompt"][3] for pid, entry in comfy.items() if pid.startswith(done_id))
    assert given["extra_pnginfo"] == pnginfo and given["api_key_comfy_org"] == secret  # what SaveImage embeds
    shown = [server.call("GET", path, ALICE).text for path in (f"/history/{done_id}", "/history",
                                                                f"/api/jobs/{done_id}", "/api/jobs")]
    assert all(secret not in text for text in shown)
    assert server.call("GET", f"/history/{done_id}", ALICE).json()[done_id]["prompt"][3]["extra_pnginfo"] == pnginfo


def test_extra_data_over_the_cap_is_refused_naming_the_field(server) -> None:
    huge = {"extra_pnginfo": {"workflow": "x" * (4 * 1024 * 1024 + 1)}}
    got = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": huge})
    assert got.status_code == 400 and got.json()["error"]["details"] == "extra_data"
    bad = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "extra_data": [1]})
    assert bad.status_code == 400 and bad.json()["error"]["details"] == "extra_data"


# --- 12: sockets per key are capped, and a socket lives at most so long -------------------------------------------

def _close_code(ws: Any) -> tuple[int, str]:
    """Read until the server's close frame; its code and reason."""
    import struct

    from websocket import ABNF

    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            return struct.unpack(">H", data[:2])[0], data[2:].decode()


def _raw_socket(srv: Any, key: str) -> Any:
    import websocket

    return websocket.create_connection(f"{srv.base.replace('http://', 'ws://')}/ws?token={key}", timeout=10)


def test_sockets_over_the_per_key_cap_are_closed_with_1013(tmp_path) -> None:
    with running_server(tmp_path, native_max_sockets_per_key=2) as srv:
        held = [_raw_socket(srv, "alice-key") for _ in range(2)]
        try:
            for ws in held:
                assert json.loads(ws.recv())["type"] == "status"
            over = _raw_socket(srv, "alice-key")
            code, reason = _close_code(over)
            assert code == 1013 and "at most 2" in reason
            bobs = _raw_socket(srv, "bob-key")  # another key has its own allowance
            assert json.loads(bobs.recv())["type"] == "status"
            bobs.close()
            held.pop().close()

            def admitted() -> bool:
                ws = _raw_socket(srv, "alice-key")
                try:
                    return json.loads(ws.recv()).get("type") == "status"
                except Exception:  # closed with 1013: the server has not seen the close yet
                    return False
                finally:
                    ws.close()
            wait_until(admitted, 10, "a freed socket slot")
        finally:
            for ws in held:
                ws.close()


def test_a_socket_is_closed_after_its_lifetime(tmp_path) -> None:
    with running_server(tmp_path, native_socket_max_s=0.2) as srv:
        ws = _raw_socket(srv, "alice-key")
        assert json.loads(ws.recv())["type"] == "status"
        assert _close_code(ws)[0] == 1001
        ws.close()


# --- 20, 25: uploads are staged by reference, under names that never collide ------------------------------------

def test_uploads_are_staged_by_reference_under_distinct_names(server) -> None:
    from comfy_saas.jobs import keys, operations

    nested = upload(server, "b.png", _png((1, 1, 1)), subfolder="a").json()
    flat = upload(server, "a_b.png", _png((2, 2, 2))).json()
    assert (nested["name"], flat["name"]) == ("b.png", "a_b.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a/b.png"}},
              "2": {"class_type": "LoadImage", "inputs": {"image": "a_b.png [input]"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "n"}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}}}
    prompt_id = server.call("POST", "/prompt", ALICE, json={"prompt": prompt}).json()["prompt_id"]
    assert finished(server, prompt_id)["status"] == "completed"
    svc = server.stack.services
    media = {m["name"]: m for m in svc.store.payload(prompt_id)["media"]}
    graph = operations.job_workflow(svc, prompt_id)
    one, two = graph["1"]["inputs"]["image"], graph["2"]["inputs"]["image"]
    assert one != two and set(media) == {one, two}
    assert media[one]["ref"] == keys.native_upload("user/alice", "a", "b.png")  # the upload itself, not a copy
    assert media[two]["ref"] == keys.native_upload("user/alice", "", "a_b.png")
    assert "base64" not in json.dumps(media)


# --- 11, 17: what polling /queue and /api/jobs costs the store, and /api/jobs paging -----------------------------

@pytest.fixture
def counted_gets(server, monkeypatch) -> dict[str, int]:
    """Dict reads made by the server while the test runs, by key family (the part before the first ':')."""
    d = server.stack.services.store.d
    counts: dict[str, int] = {}
    real_get = d.get

    def get(key: str, *args: Any, **kw: Any) -> Any:
        family = key.split(":", 1)[0]
        counts[family] = counts.get(family, 0) + 1
        return real_get(key, *args, **kw)
    monkeypatch.setattr(d, "get", get)
    return counts


def test_polling_the_queue_reads_each_workflow_once(server, counted_gets) -> None:
    idle = [server.call("POST", "/prompt", BOB, json={"prompt": GRAPH, "extra_data": {"pool": "idle"}}
                        ).json()["prompt_id"] for _ in range(3)]
    try:
        assert len(server.call("GET", "/queue", BOB).json()["queue_pending"]) == 3
        counted_gets.clear()
        for _ in range(5):
            pending = server.call("GET", "/queue", BOB).json()["queue_pending"]
            assert [i[1] for i in pending] == idle
        assert counted_gets.get("payload", 0) == 0, counted_gets
    finally:
        server.call("POST", "/queue", BOB, json={"delete": idle})


def test_a_finished_job_is_read_once_by_api_jobs(server, counted_gets) -> None:
    prompt_id = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH}).json()["prompt_id"]
    assert finished(server, prompt_id)["status"] == "completed"
    first = server.call("GET", f"/api/jobs/{prompt_id}", ALICE).json()
    assert server.call("GET", f"/api/jobs/{prompt_id}", BOB).status_code == 404
    counted_gets.clear()
    assert server.call("GET", f"/api/jobs/{prompt_id}", ALICE).json() == first
    assert counted_gets == {}, counted_gets


def test_api_jobs_paging_counts_every_prompt_and_refuses_limit_zero(server) -> None:
    newest = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH}).json()
    assert finished(server, newest["prompt_id"])["status"] == "completed"
    page = server.call("GET", "/api/jobs?limit=1", ALICE).json()
    assert page["jobs"][0]["id"] == newest["prompt_id"]
    assert page["pagination"]["total"] == newest["number"] and page["pagination"]["has_more"] is (newest["number"] > 1)
    zero = server.call("GET", "/api/jobs?limit=0", ALICE)
    assert zero.status_code == 422 and zero.json()["error"]["field"] == "limit"


# --- 19: uploads under taken names are compared by digest; /object_info lists uploads once in a while ----------

@pytest.fixture
def counted_objects(server, monkeypatch) -> dict[str, int]:
    """Object storage calls made while the test runs: listings, and bytes read."""
    objects = server.stack.services.objects
    counts = {"lists": 0, "bytes_read": 0}
    real_list, real_read = objects.list_keys, objects.read_if_exists

    def list_keys(prefix: str) -> list[str]:
        counts["lists"] += 1
        return real_list(prefix)

    def read_if_exists(key: str) -> bytes | None:
        got = real_read(key)
        counts["bytes_read"] += len(got or b"")
        return got
    monkeypatch.setattr(objects, "list_keys", list_keys)
    monkeypatch.setattr(objects, "read_if_exists", read_if_exists)
    return counts


def test_an_upload_under_taken_names_reads_digests_not_files(server, counted_objects) -> None:
    versions = [_png((i, 0, 0)) + b"\0" * 4096 for i in range(6)]
    names = [upload(server, "same.png", v, subfolder="dig").json()["name"] for v in versions]
    assert names == ["same.png", *(f"same ({n}).png" for n in range(1, 6))]
    counted_objects.update(lists=0, bytes_read=0)
    assert upload(server, "same.png", versions[5], subfolder="dig").json()["name"] == "same (5).png"
    assert counted_objects["lists"] == 1 and counted_objects["bytes_read"] < len(versions[5])
    fresh = upload(server, "same.png", _png((9, 9, 9)), subfolder="dig").json()["name"]
    assert fresh == "same (6).png"


def test_object_info_lists_uploads_once_and_sees_new_ones_at_once(server, counted_objects) -> None:
    server.call("GET", "/object_info/LoadImage", ALICE)
    counted_objects["lists"] = 0
    for _ in range(3):
        server.call("GET", "/object_info/LoadImage", ALICE)
    assert counted_objects["lists"] == 0
    upload(server, "listed-now.png", _png((3, 3, 3)))
    assert "listed-now.png" in json.dumps(server.call("GET", "/object_info/LoadImage", ALICE).json())


# --- 15: the socket tells the queue grew before the prompt starts ------------------------------------------------

def test_the_status_of_a_new_prompt_comes_before_its_execution_start(server) -> None:
    ws = _socket(server, "ord", "alice-key")
    try:
        sent = server.call("POST", "/prompt", ALICE, json={"prompt": GRAPH, "client_id": "ord"})
        prompt_id = sent.json()["prompt_id"]
        seen = _until_done(ws, prompt_id)
    finally:
        ws.close()
    kinds = [m["type"] for m in seen]
    start = kinds.index("execution_start")
    grew = [i for i, m in enumerate(seen) if m["type"] == "status"
            and m["data"]["status"]["exec_info"]["queue_remaining"] >= 1]
    assert grew and grew[0] < start, kinds
    assert kinds[-2:] == ["status", "executing"]


# --- 14: numbers outside their bounds are refused before they run, in ComfyUI's shape --------------------------

def test_an_out_of_range_number_is_a_node_error(server) -> None:
    graph = {**GRAPH, "1": {**EMPTY, "inputs": {**EMPTY["inputs"], "width": 10**30}}}
    got = server.call("POST", "/prompt", ALICE, json={"prompt": graph})
    assert got.status_code == 400 and got.json()["error"]["type"] == "prompt_outputs_failed_validation"
    assert got.json()["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
