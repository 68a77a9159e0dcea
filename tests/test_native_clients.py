"""Real ComfyUI client code from PyPI against the native API on the local stack: each queues a prompt, follows it
over the WebSocket and gets its image back through /history and /view."""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request
import uuid

import pytest
import requests
import websocket
from conftest import ALICE, running_server
from PIL import Image

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 255},
               "_meta": {"title": "Empty Image"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "native"},
               "_meta": {"title": "Save Image"}}}


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _address(server, key: str) -> str:
    """host:port/k/<key>: what a tool that only takes a server address is given."""
    return f"{server.base.removeprefix('http://')}/k/{key}"


def example_flow(address: str) -> list[bytes]:
    """ComfyUI's script_examples/websockets_api_example.py, step by step: socket first, prompt with its own
    prompt_id, wait for `executing` with node null, then /history and /view; the images."""
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}", timeout=30)
    try:
        data = json.dumps({"prompt": GRAPH, "client_id": client_id, "prompt_id": prompt_id}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://{address}/prompt", data=data)) as resp:
            assert json.loads(resp.read())["prompt_id"] == prompt_id
        seen = []
        while True:
            out = ws.recv()
            if isinstance(out, str):
                msg = json.loads(out)
                seen.append(msg["type"])
                if msg["type"] == "executing" and msg["data"]["node"] is None \
                        and msg["data"]["prompt_id"] == prompt_id:
                    break
    finally:
        ws.close()
    assert seen[0] == "status" and "execution_start" in seen and "executed" in seen
    assert seen.index("execution_start") < seen.index("executed") < seen.index("execution_success")
    with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as resp:
        entry = json.loads(resp.read())[prompt_id]
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": entry["status"]["messages"]}
    images = []
    for image in entry["outputs"]["2"]["images"]:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"http://{address}/view?{query}") as resp:
            assert resp.headers["Content-Type"] == "image/png"
            images.append(resp.read())
    return images


def test_websockets_api_example_flow(server) -> None:
    """The example given `host:port/k/<key>` as its server address."""
    assert [_png_size(i) for i in example_flow(_address(server, "alice-key"))] == [(16, 8)]
    listed = server.call("GET", "/v1/jobs", ALICE).json()["jobs"]
    assert listed[0]["status"] == "completed" and listed[0]["user_id"] == "alice"


def test_websockets_api_example_unchanged_on_a_server_without_keys(tmp_path) -> None:
    """`comfy-saas serve` without keys: the example runs as written, against the plain address."""
    with running_server(tmp_path / "data", api_keys="", allow_anonymous=True) as open_server:
        assert [_png_size(i) for i in example_flow(open_server.base.removeprefix("http://"))] == [(16, 8)]


def test_comfy_api_simplified_queues_and_waits_for_images(server) -> None:
    """comfy_api_simplified with Basic auth (the key as password): it connects after submitting."""
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(server.base, user="alice", password="alice-key")
    images = api.queue_and_wait_images(ComfyWorkflowWrapper(json.loads(json.dumps(GRAPH))), "Save Image")
    assert [_png_size(data) for data in images.values()] == [(16, 8)]


def test_comfy_ui_client_gets_outputs(server) -> None:
    """comfy-ui-client: submits, then connects, asks /queue on every status, then /history and /view."""
    from comfy_ui_client.client import ComfyUIClient

    client = ComfyUIClient(_address(server, "bob-key"))
    outputs = client.get_outputs(json.loads(json.dumps(GRAPH)))
    files = outputs["images"]["2"]["output"]
    assert [_png_size(data) for folder in files.values() for data in folder.values()] == [(16, 8)]


@pytest.mark.parametrize("path", ["/object_info", "/api/object_info/SaveImage"])
def test_object_info_is_the_pools_catalogue(server, path: str) -> None:
    body = server.call("GET", path, ALICE).json()
    assert body["SaveImage"]["output_node"] is True
    assert body["SaveImage"]["input"]["required"]["images"][0] == "IMAGE"


def test_view_streams_from_s3_storage(tmp_path, s3) -> None:
    """With outputs in R2 (moto here), /view answers the bytes itself, read from storage as they come."""
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    with running_server(tmp_path / "data", storage_backend="s3", r2=s3.config) as r2_server:
        api = ComfyApiWrapper(r2_server.base, user="alice", password="alice-key")
        images = api.queue_and_wait_images(ComfyWorkflowWrapper(json.loads(json.dumps(GRAPH))), "Save Image")
        assert [_png_size(data) for data in images.values()] == [(16, 8)]
        upload = requests.post(f"{r2_server.base}/k/alice-key/upload/image", timeout=30,
                               files={"image": ("up.png", next(iter(images.values())), "image/png")}).json()
        ref = {"filename": upload["name"], "subfolder": upload["subfolder"], "type": upload["type"]}
        view = requests.get(f"{r2_server.base}/k/alice-key/view", params=ref, timeout=30)
        assert view.headers["Content-Type"] == "image/png" and _png_size(view.content) == (16, 8)
        missing = requests.get(f"{r2_server.base}/k/alice-key/view", timeout=30,
                               params={**ref, "filename": "nothing.png"})
        assert missing.status_code == 404
