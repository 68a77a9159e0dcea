"""The official SDK runs a workflow on the local stack by asset handle and by file name, as the SDK's own
end-to-end test does, and downloads the output (needs the v2 jobs routes; skipped without them)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from conftest import Server, running_server
from PIL import Image

comfy_sdk = pytest.importorskip("comfy_sdk")
pytest.importorskip("comfy_saas.v2.routes", reason="the v2 jobs routes are not here yet")

INPUT_NAME = "sdk_e2e_input.png"
WORKFLOW = {"1": {"class_type": "LoadImage", "inputs": {"image": ""}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sdk_e2e", "images": ["2", 0]}}}


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 7), (250, 128, 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("data")) as s:
        yield s


@pytest.fixture
def client(srv: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[comfy_sdk.Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", srv.base)
    c = comfy_sdk.Comfy(api_key="alice-key")
    yield c
    c.close()


def _inverted(job: comfy_sdk.jobs.Job, tmp_path) -> Image.Image:
    assert job.status == "succeeded", job.error
    path = job.outputs[0].to_file(tmp_path / "out.png")
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("by", ["handle", "name"])
def test_the_sdk_runs_a_workflow_on_an_uploaded_input(client: comfy_sdk.Comfy, by: str, tmp_path) -> None:
    asset = client.assets.from_bytes(png(), filename=INPUT_NAME, content_type="image/png")
    asset.commit()
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in WORKFLOW.items()}
    graph["1"]["inputs"]["image"] = INPUT_NAME
    wf = client.workflows.from_json(graph)
    if by == "handle":
        wf.set_input("1", "image", asset)
    image = _inverted(client.run(wf).wait(timeout=60), tmp_path)
    assert image.size == (10, 7) and image.getpixel((4, 3)) == (5, 127, 252)


def test_a_reference_to_no_asset_is_a_typed_missing_asset(client: comfy_sdk.Comfy) -> None:
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in WORKFLOW.items()}
    graph["1"]["inputs"]["image"] = {"__type": "core/ASSET", "info": {"id": "9f8a1c0d-2b3e-4f56-8a7b-1c2d3e4f5a6b"}}
    with pytest.raises(comfy_sdk.exceptions.MissingAsset):
        client.submit(client.workflows.from_json(graph))
