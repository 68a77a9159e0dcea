"""Tenants on one warm ComfyUI through the local stack: each job's files live in its own subfolders and are
gone once its outputs are uploaded; no name or annotation reaches another job's inputs or outputs; an
output ComfyUI will not serve fails the job itself, without retries."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import requests
from conftest import ALICE, BOB, Server, wait_until
from PIL import Image

RED, BLUE = (200, 0, 0), (0, 0, 200)


def png(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def reads(image: str, steps: int = 1, prefix: str = "out") -> dict:
    """LoadImage(image) -> SlowPassthrough -> SaveImage(prefix)."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": steps, "delay": 0.1,
                                                                "send_preview": False, "send_text": False, "seed": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def pixel(job: dict) -> tuple:
    return Image.open(io.BytesIO(requests.get(job["outputs"][0]["url"], timeout=10).content)).getpixel((0, 0))


def test_each_job_works_in_its_own_folders_and_leaves_nothing_behind(server: Server):
    folders = server.stack.processes[0].folders
    alice = server.call("POST", "/v1/jobs", ALICE, json={"workflow": reads("secret.png", steps=10),
                                                         "media": [{"name": "secret.png", "base64": png(RED)}]})
    job_id = alice.json()["id"]
    # While it runs, its upload sits in input/<its prompt id>/, not where a bare name would find it.
    uploaded = wait_until(lambda: files_in(folders.input), 10, "the upload")
    assert [p.relative_to(folders.input).as_posix() for p in uploaded] == [f"{job_id}-1/secret.png"]
    bob = server.call("POST", "/v1/jobs", BOB, json={"workflow": reads("secret.png"),
                                                     "media": [{"name": "secret.png", "base64": png(BLUE)}]})
    done_alice, done_bob = server.done(job_id, ALICE), server.done(bob.json()["id"], BOB)
    assert done_alice["status"] == done_bob["status"] == "completed"
    assert pixel(done_alice) == RED and pixel(done_bob) == BLUE  # same name, each its own file
    assert files_in(folders.input) == files_in(folders.output) == files_in(folders.temp) == []


def test_another_tenant_cannot_load_a_jobs_inputs_or_outputs(server: Server):
    folders = server.stack.processes[0].folders
    alice = server.call("POST", "/v1/jobs", ALICE, json={"workflow": reads("secret.png", steps=20),
                                                         "media": [{"name": "secret.png", "base64": png(RED)}]})
    job_id = alice.json()["id"]
    wait_until(lambda: files_in(folders.output) or files_in(folders.input), 10, "alice's files")
    # Every way of naming her files is refused before anything runs...
    for name in [f"{job_id}-1/secret.png", f"{job_id}-1/out_00001_.png [output]", "out_00001_.png [output]",
                 f"../input/{job_id}-1/secret.png", f"{folders.input}/{job_id}-1/secret.png", "x.png [temp]"]:
        refused = server.call("POST", "/v1/jobs", BOB, json={"workflow": reads(name)})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "workflow.1.inputs.image", name
    # ...and a bare name finds nothing of hers: uploads never land at the top of the input folder.
    for name in ["secret.png", "secret.png [input]"]:
        job = server.done(server.call("POST", "/v1/jobs", BOB, json={"workflow": reads(name)}).json()["id"], BOB)
        assert job["status"] == "failed" and job["error"]["type"] == "validation_error", job["error"]
        assert "Invalid image file" in job["error"]["message"]
    assert server.done(job_id, ALICE)["status"] == "completed"
    assert files_in(folders.input) == files_in(folders.output) == []


def test_an_output_comfyui_will_not_serve_fails_the_job_without_retries(server: Server):
    report = {"class_type": "ReportOutput", "inputs": {"filename": "never_written.png", "subfolder": "",
                                                       "folder_type": "output"}}
    climbing = {**report, "inputs": {"filename": "passwd", "subfolder": "../../../../etc", "folder_type": "output"}}
    for node in (report, climbing):
        job = server.done(server.call("POST", "/v1/jobs", ALICE, json={"workflow": {"1": node}}).json()["id"], ALICE)
        assert job["status"] == "failed" and job["error"]["type"] == "output_unavailable", job["error"]
        assert job["attempts"] == 1 and "node 1" in job["error"]["message"]
    assert Path("/etc/passwd").is_file()  # the cleanup never reaches outside ComfyUI's folders
