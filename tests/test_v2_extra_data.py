"""`extra_data.api_key_comfy_org` on POST /api/v2/jobs reaches ComfyUI with the job's prompt (what partner API
nodes read), and is never stored in the job record, shown by any view or listing, or logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import requests
from conftest import ALICE, Server, running_server, wait_until

from comfy_saas.jobs import keys

SECRET = "comfyui-partner-key-4c1d2e9f"
WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 9}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "partner"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("extra")) as s:
        yield s


def test_the_partner_key_goes_to_comfyui_and_nowhere_else(srv: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    made = srv.call("POST", "/api/v2/jobs", ALICE, json={"workflow": WF, "extra_data": {"api_key_comfy_org": SECRET}})
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]

    def done() -> dict | None:
        body = srv.call("GET", f"/api/v2/jobs/{job_id}", ALICE).json()
        return body if body["status"] == "succeeded" else None

    wait_until(done, 30, "the job")
    history = requests.get(srv.stack.workers[0].comfy.base_url + "/history", timeout=10).json()
    prompts = [entry["prompt"] for pid, entry in history.items() if pid.startswith(job_id)]
    assert prompts and prompts[0][3]["api_key_comfy_org"] == SECRET  # ComfyUI's extra_data for the prompt
    shown = [made.text] + [srv.call("GET", path, ALICE).text for path in (
        f"/api/v2/jobs/{job_id}", f"/api/v2/jobs/{job_id}/workflow", "/api/v2/jobs", f"/api/v2/jobs/{job_id}/events",
        f"/v1/jobs/{job_id}?include=workflow", "/v1/jobs")]
    assert all(SECRET not in text for text in shown)
    record = srv.stack.services.store.d.get(keys.job(job_id))
    assert record is not None and SECRET not in json.dumps(record)
    assert SECRET not in caplog.text
