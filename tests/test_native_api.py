"""The native API's routes on the local stack: refusals in ComfyUI's shape, tenancy, cancels, uploads, the
socket's events, and the other surfaces' paths left alone."""

from __future__ import annotations

import io
import json
import threading
import uuid
from typing import Any

import pytest
import requests
import websocket
from conftest import ALICE, BOB, wait_until
from PIL import Image

EMPTY = {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}}
GRAPH = {"1": EMPTY, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "n"}}}


def slow(steps: int = 4, delay: float = 0.3) -> dict[str, Any]:
    return {"1": EMPTY,
            "2": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": steps, "delay": delay,
                                                               "send_preview": False, "send_text": False, "seed": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}}}


@pytest.fixture(scope="module", autouse=True)
def catalogue(server) -> None:
    """Pre-flight needs the catalogue the worker publishes when it starts."""
    wait_until(lambda: server.call("GET", "/object_info", ALICE).status_code == 200, 30, "the node catalogue")


def post_prompt(server, headers: dict, prompt: dict, path: str = "/prompt", **extra: Any) -> requests.Response:
    return server.call("POST", path, headers, json={"prompt": prompt, **extra})


def job_status(server, prompt_id: str) -> str:
    return server.call("GET", f"/v1/jobs/{prompt_id}").json()["status"]


def finished(server, prompt_id: str) -> str:
    return wait_until(lambda: (s := job_status(server, prompt_id)) in {"completed", "failed", "cancelled"} and s,
                      30, f"prompt {prompt_id}")


@pytest.mark.parametrize(("prompt", "kind", "node"), [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": GRAPH["2"]}, "invalid_prompt", None),
    ({"1": EMPTY, "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
     "prompt_outputs_failed_validation", "2"),
    ({"1": EMPTY}, "prompt_no_outputs", None),
    ({}, "prompt_no_outputs", None),
])
def test_refusals_come_back_in_comfyuis_shape(server, prompt: dict, kind: str, node: str | None) -> None:
    resp = post_prompt(server, ALICE, prompt)
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"]["type"] == kind and set(body["error"]) == {"type", "message", "details", "extra_info"}
    if node is None:
        assert body["node_errors"] == {}
    else:
        entry = body["node_errors"][node]
        assert entry["class_type"] == "SaveImage" and entry["errors"][0]["type"] == "required_input_missing"
    assert server.call("GET", "/queue", ALICE).json()["queue_pending"] == []


def test_no_prompt_and_bad_prompt_id(server) -> None:
    assert server.call("POST", "/prompt", ALICE, json={"client_id": "x"}).json()["error"]["type"] == "no_prompt"
    bad = post_prompt(server, ALICE, GRAPH, prompt_id="ABC")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_prompt_id"


def test_client_prompt_id_is_the_job_id_and_owned(server) -> None:
    prompt_id = str(uuid.uuid4())
    first = post_prompt(server, ALICE, GRAPH, prompt_id=prompt_id, client_id="c")
    assert first.status_code == 200 and first.json()["prompt_id"] == prompt_id
    assert finished(server, prompt_id) == "completed"
    again = post_prompt(server, ALICE, GRAPH, prompt_id=prompt_id)  # a retried submission: the same answer
    assert again.json() == first.json()
    taken = post_prompt(server, BOB, GRAPH, prompt_id=prompt_id)
    assert taken.status_code == 400 and taken.json()["error"]["type"] == "invalid_prompt_id"
    assert server.call("GET", f"/history/{prompt_id}", BOB).json() == {}
    assert prompt_id in server.call("GET", f"/history/{prompt_id}", ALICE).json()


def test_two_keys_never_cross(server) -> None:
    """Alice's queued prompt (the idle pool has no worker): bob sees none of it and cannot stop it."""
    queued = post_prompt(server, ALICE, GRAPH, path="/p/idle/prompt").json()["prompt_id"]
    done = post_prompt(server, ALICE, GRAPH).json()["prompt_id"]
    finished(server, done)
    out = server.call("GET", f"/history/{done}", ALICE).json()[done]["outputs"]["2"]["images"][0]
    assert server.call("GET", "/view", BOB, params=out).status_code == 404
    assert server.call("GET", "/view", ALICE, params=out).status_code == 200
    bob_sees = [server.call("GET", p, BOB).json() for p in ("/history", "/queue", "/api/jobs", "/prompt")]
    assert queued not in json.dumps(bob_sees) and done not in json.dumps(bob_sees)
    assert server.call("GET", f"/api/jobs/{done}", BOB).status_code == 404
    for path, body in (("/queue", {"delete": [queued]}), ("/queue", {"clear": True}), ("/interrupt", {})):
        assert server.call("POST", path, BOB, json=body).status_code == 200
    assert server.call("POST", f"/api/jobs/{queued}/cancel", BOB).json() == {"cancelled": False}
    assert job_status(server, queued) == "queued"
    pending = server.call("GET", "/queue", ALICE).json()["queue_pending"]
    assert [item[1] for item in pending] == [queued] and pending[0][2] == GRAPH
    assert done in server.call("GET", "/history", ALICE).json()
    assert server.call("POST", "/queue", ALICE, json={"delete": [queued]}).status_code == 200
    assert finished(server, queued) == "cancelled"
    assert server.call("GET", "/queue", ALICE).json()["queue_pending"] == []
    waiting = [post_prompt(server, ALICE, GRAPH, path="/p/idle/prompt").json()["prompt_id"] for _ in range(3)]
    assert server.call("POST", "/api/jobs/cancel", BOB, json={"job_ids": waiting[:1]}).json() == {"cancelled": False}
    assert server.call("POST", "/api/jobs/cancel", ALICE, json={"job_ids": waiting[:1]}).json() == {"cancelled": True}
    assert server.call("POST", "/api/queue", ALICE, json={"clear": True}).status_code == 200
    assert [finished(server, p) for p in waiting] == ["cancelled"] * 3


def test_interrupt_cancels_the_callers_running_prompt_and_the_next_runs(server) -> None:
    running = post_prompt(server, ALICE, slow(steps=100, delay=0.1)).json()["prompt_id"]
    wait_until(lambda: job_status(server, running) == "running", 30, "the slow prompt to start")
    assert server.call("POST", "/interrupt", BOB, json={"prompt_id": running}).status_code == 200
    assert server.call("GET", f"/api/jobs/{running}", ALICE).json()["status"] == "in_progress"
    assert server.call("GET", "/queue", ALICE).json()["queue_running"][0][1] == running
    assert server.call("GET", f"/history/{running}", ALICE).json() == {}  # {} until it is done
    assert server.call("POST", "/interrupt", ALICE).status_code == 200
    assert finished(server, running) == "cancelled"
    entry = server.call("GET", f"/history/{running}", ALICE).json()[running]
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert server.call("GET", f"/api/jobs/{running}", ALICE).json()["status"] == "cancelled"
    following = post_prompt(server, ALICE, GRAPH).json()["prompt_id"]
    assert finished(server, following) == "completed"


def _collect(ws: websocket.WebSocket, prompt_id: str, into: list) -> None:
    while True:
        out = ws.recv()
        msg = json.loads(out) if isinstance(out, str) else {"type": "binary"}
        into.append(msg)
        if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == prompt_id:
            return


def test_socket_events_in_comfyuis_order_only_to_their_client(server) -> None:
    base = server.base.replace("http://", "ws://")
    mine = websocket.create_connection(f"{base}/ws?clientId=mine&token=alice-key", timeout=30)
    other = websocket.create_connection(f"{base}/api/ws?clientId=other&token=alice-key", timeout=30)
    bobs = websocket.create_connection(f"{base}/ws?clientId=mine", header=["Authorization: Bearer bob-key"],
                                       timeout=30)
    try:
        for ws in (mine, other, bobs):
            assert json.loads(ws.recv())["type"] == "status"
        prompt_id = post_prompt(server, ALICE, slow(steps=4, delay=0.4), client_id="mine").json()["prompt_id"]
        seen: list[dict] = []
        _collect(mine, prompt_id, seen)
        other.send(json.dumps({"type": "feature_flags", "data": {}}))
        heard = [json.loads(other.recv())]
        while heard[-1]["type"] != "feature_flags":
            heard.append(json.loads(other.recv()))
        bobs.settimeout(1.0)
        with pytest.raises(websocket.WebSocketTimeoutException):
            bobs.recv()
    finally:
        for ws in (mine, other, bobs):
            ws.close()
    assert {m["type"] for m in heard[:-1]} <= {"status"}  # the owner's queue, nothing of another client's prompt
    kinds = [m["type"] for m in seen]
    order = ["execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"]
    assert [k for k in dict.fromkeys(kinds) if k in order] == order
    assert kinds[-2:] == ["status", "executing"] and seen[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    progress = [m["data"] for m in seen if m["type"] == "progress"]
    assert progress and all(p["prompt_id"] == prompt_id and p["node"] == "2" and p["max"] == 4 for p in progress)
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == "3" and executed["output"]["images"][0]["type"] == "output"


def _png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, format="PNG")
    return out.getvalue()


def test_uploads_are_the_callers_and_prompts_load_them(server) -> None:
    def upload(headers: dict, data: bytes, **form: str) -> dict:
        resp = server.call("POST", "/upload/image", headers, files={"image": ("in.png", data, "image/png")},
                           data=form)
        assert resp.status_code == 200, resp.text
        return resp.json()

    first = upload(ALICE, _png((10, 20, 30)), subfolder="default_upload_folder")
    assert first == {"name": "in.png", "subfolder": "default_upload_folder", "type": "input"}
    assert upload(ALICE, _png((10, 20, 30)), subfolder="default_upload_folder")["name"] == "in.png"
    assert upload(ALICE, _png((1, 2, 3)), subfolder="default_upload_folder")["name"] == "in (1).png"
    assert upload(BOB, _png((9, 9, 9)), subfolder="default_upload_folder")["name"] == "in.png"  # bob's own
    def choices(headers: dict) -> list[str]:
        return server.call("GET", "/object_info/LoadImage", headers).json()["LoadImage"]["input"]["required"][
            "image"][0]

    assert "default_upload_folder/in (1).png" in choices(ALICE)  # LoadImage lists the caller's uploads
    assert choices(BOB) == ["default_upload_folder/in.png"]
    view = {"filename": "in.png", "subfolder": "default_upload_folder", "type": "input"}
    assert Image.open(io.BytesIO(server.call("GET", "/view", BOB, params=view).content)).getpixel((0, 0)) == (9, 9, 9)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "default_upload_folder/in.png"}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
    prompt_id = post_prompt(server, ALICE, prompt).json()["prompt_id"]
    assert finished(server, prompt_id) == "completed"
    ref = server.call("GET", f"/history/{prompt_id}", ALICE).json()[prompt_id]["outputs"]["3"]["images"][0]
    image = Image.open(io.BytesIO(server.call("GET", "/api/view", ALICE, params=ref).content))
    assert image.convert("RGB").getpixel((0, 0)) == (245, 235, 225)


def test_auth_forms(server) -> None:
    assert server.call("GET", "/queue", {}).status_code == 401
    assert server.call("GET", "/queue?token=alice-key", {}).status_code == 200
    assert server.call("GET", "/k/alice-key/api/queue", {}).status_code == 200
    assert requests.get(server.base + "/queue", auth=("anyone", "bob-key"), timeout=10).status_code == 200
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(server.base.replace("http://", "ws://") + "/ws?token=nope", timeout=10)


def test_pool_and_machine_views(server) -> None:
    stats = server.call("GET", "/system_stats", ALICE).json()
    assert set(stats) == {"system", "devices"} and stats["devices"][0]["name"]
    assert "checkpoints" in server.call("GET", "/models", ALICE).json()
    assert isinstance(server.call("GET", "/models/checkpoints", ALICE).json(), list)
    assert server.call("GET", "/embeddings", ALICE).json() == []
    assert server.call("GET", "/api/history?max_items=200", ALICE).status_code == 200  # what the editor asks
    assert server.call("GET", "/object_info/NoSuchNode", ALICE).json() == {}
    finished(server, post_prompt(server, ALICE, GRAPH).json()["prompt_id"])
    jobs = server.call("GET", "/api/jobs", ALICE, params={"status": "completed", "limit": "2"}).json()
    assert jobs["pagination"]["limit"] == 2 and all(j["status"] == "completed" for j in jobs["jobs"])
    detail = server.call("GET", f"/api/jobs/{jobs['jobs'][0]['id']}", ALICE).json()
    assert detail["outputs"] and detail["execution_status"]["status_str"] == "success"


def test_a_prompt_reads_the_same_at_every_path_it_has(server) -> None:
    """At ComfyUI's paths, under /api/ and behind a key prefix, a prompt (posted any of those ways) has one
    history."""
    ids = [post_prompt(server, ALICE, GRAPH, path).json()["prompt_id"] for path in ("/prompt", "/api/prompt")]
    ids.append(post_prompt(server, {}, GRAPH, "/k/alice-key/prompt").json()["prompt_id"])
    for pid in ids:
        assert finished(server, pid) == "completed"
        seen = [server.call("GET", f"{path}/{pid}", ALICE).json() for path in ("/history", "/api/history")]
        seen += [server.call("GET", f"/k/alice-key{path}/{pid}", {}).json() for path in ("/history", "/api/history")]
        assert seen[0][pid]["status"]["completed"] and all(s == seen[0] for s in seen)


def test_other_surfaces_paths_are_left_alone(server) -> None:
    assert server.call("GET", "/api/v2/prompt", ALICE).status_code == 404
    assert server.call("GET", "/health").status_code == 200
    assert server.call("POST", "/v1/jobs", ALICE, json={"workflow": GRAPH}).status_code == 201


def test_many_sockets_and_prompts_at_once(server) -> None:
    """Four clients of two keys, each with its own prompt: every socket ends with its own prompt only."""
    results: dict[str, list] = {}

    def client(key: str, name: str) -> None:
        ws = websocket.create_connection(f"{server.base.replace('http://', 'ws://')}/k/{key}/ws?clientId={name}",
                                         timeout=30)
        try:
            ws.recv()
            pid = requests.post(f"{server.base}/k/{key}/prompt", json={"prompt": GRAPH, "client_id": name},
                                timeout=30).json()["prompt_id"]
            seen: list = []
            _collect(ws, pid, seen)
            results[name] = [pid, {m["data"].get("prompt_id") for m in seen} - {None}]
        finally:
            ws.close()

    threads = [threading.Thread(target=client, args=(k, f"{k}-{i}")) for k in ("alice-key", "bob-key")
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(ids == {pid} for pid, ids in results.values())


def test_preview_frames_and_execution_errors_reach_the_socket(server) -> None:
    """A preview frame the running attempt left in the store goes out as ComfyUI's binary type-1 frame; a node
    that fails ends the prompt with execution_error."""
    import base64

    from comfy_saas.jobs import keys

    ws = websocket.create_connection(f"{server.base.replace('http://', 'ws://')}/ws?clientId=pv&token=alice-key",
                                     timeout=30)
    try:
        ws.recv()
        slow_id = post_prompt(server, ALICE, slow(steps=30, delay=0.1), client_id="pv").json()["prompt_id"]
        wait_until(lambda: job_status(server, slow_id) == "running", 30, "the slow prompt to start")
        frame = {"seq": 1, "format": "png", "data_b64": base64.b64encode(_png((5, 5, 5))).decode()}
        server.stack.services.store.d.put(keys.preview(slow_id), frame)  # as the worker's attempt writes it
        seen: list[Any] = []
        while not (seen and isinstance(seen[-1], bytes)):
            seen.append(ws.recv())
        assert seen[-1][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" and seen[-1][8:] == _png((5, 5, 5))
        failing = {"1": EMPTY, "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "boom"}},
                   "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}}}
        fail_id = post_prompt(server, ALICE, failing, client_id="pv").json()["prompt_id"]
        events: list[dict] = []
        _collect(ws, fail_id, events)
    finally:
        ws.close()
    error = next(m["data"] for m in events if m["type"] == "execution_error" and m["data"]["prompt_id"] == fail_id)
    assert error["node_id"] == "2" and "boom" in error["exception_message"]
    status = server.call("GET", f"/history/{fail_id}", ALICE).json()[fail_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False


def test_mask_upload_composes_the_alpha(server) -> None:
    """/upload/mask: the original upload with the painted mask's alpha, kept as a new upload."""
    original = server.call("POST", "/upload/image", ALICE, files={"image": ("base.png", _png((200, 0, 0)))}).json()
    mask = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 64)).save(mask, format="PNG")
    ref = json.dumps({"filename": original["name"], "subfolder": "", "type": "input"})
    made = server.call("POST", "/upload/mask", ALICE, files={"image": ("clipspace-mask.png", mask.getvalue())},
                       data={"original_ref": ref}).json()
    assert made == {"name": "clipspace-mask.png", "subfolder": "", "type": "input"}
    view = {"filename": made["name"], "type": "input"}
    pixel = Image.open(io.BytesIO(server.call("GET", "/view", ALICE, params=view).content)).getpixel((0, 0))
    assert pixel == (200, 0, 0, 64)
    assert server.call("GET", "/view", BOB, params=view).status_code == 404


def test_the_pool_comes_from_extra_data_and_key_limits_apply(server) -> None:
    picked = post_prompt(server, ALICE, GRAPH, extra_data={"pool": "idle"}).json()["prompt_id"]
    assert server.call("GET", f"/v1/jobs/{picked}").json()["pool"] == "idle"
    assert server.call("POST", "/queue", ALICE, json={"delete": [picked]}).status_code == 200
    refused = post_prompt(server, ALICE, GRAPH, path="/p/nowhere/prompt")
    assert refused.status_code == 400 and refused.json()["error"]["details"] == "pool"


@pytest.mark.parametrize("prompt", [{"1": {"class_type": "SaveImage", "inputs": ["not", "an", "object"]}},
                                    {"1": "not a node"}, [1, 2]])
def test_malformed_prompts_are_refused_in_comfyuis_shape(server, prompt: Any) -> None:
    resp = post_prompt(server, ALICE, prompt)
    assert resp.status_code == 400 and resp.json()["error"]["type"] in {"invalid_prompt", "no_prompt"}
    assert server.call("POST", "/prompt", ALICE, data=b"{not json").status_code == 400


def test_a_socket_joining_mid_run_hears_from_where_the_prompt_is(server) -> None:
    prompt_id = post_prompt(server, ALICE, slow(steps=16, delay=0.2), client_id="late").json()["prompt_id"]
    wait_until(lambda: ((server.call("GET", f"/v1/jobs/{prompt_id}").json().get("progress") or {}).get("step")
                        or 0) >= 4, 30, "the prompt to be a few steps in")
    ws = websocket.create_connection(f"{server.base.replace('http://', 'ws://')}/ws?clientId=late&token=alice-key",
                                     timeout=30)
    try:
        seen: list[dict] = []
        _collect(ws, prompt_id, seen)
    finally:
        ws.close()
    kinds = [m["type"] for m in seen]
    assert kinds[:2] == ["status", "execution_start"] and kinds[-1] == "executing"
    steps = [m["data"]["value"] for m in seen if m["type"] == "progress"]
    assert steps and steps[0] >= 4 and steps == sorted(steps)  # no replay of the steps before it joined
