"""The Python client, the `comfy-saas` CLI and the ops commands, against the real local server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Server, submit
from PIL import Image

from comfy_saas import cli, signing
from comfy_saas.client import ApiError, Client, verify_webhook

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli"}}}
SLOW = {"1": WORKFLOW["1"], "2": {"class_type": "SlowPassthrough", "inputs": {
    "image": ["1", 0], "steps": 5, "delay": 0.1, "send_preview": False, "send_text": False, "seed": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cli_slow"}}}
LOAD = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli_load"}}}


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server.base, api_key="admin-key")


def test_submit_media_and_overrides_wait_with_progress_and_download(client: Client, tmp_path: Path):
    src = tmp_path / "cat.png"
    Image.new("RGB", (12, 10), (1, 2, 3)).save(src)
    job = client.submit(LOAD, media={"in.png": src}, overrides={"2.filename_prefix": "renamed"})
    seen = []
    done = client.wait(job["id"], on_progress=lambda j: seen.append(j["status"]), poll_s=0.05, timeout_s=30)
    assert done["status"] == "completed" and seen[-1] == "completed"
    (path,) = client.download(done, tmp_path / "out")
    assert path.name == "renamed_0.png" and Image.open(path).size == (12, 10)


def test_list_iterates_pages_and_errors_raise(client: Client):
    ids = {client.submit(WORKFLOW, pool="idle")["id"] for _ in range(3)}
    listed = [j["id"] for j in client.list(page_size=2)]
    assert ids <= set(listed) and len(listed) == len(set(listed))
    with pytest.raises(ApiError) as info:
        client.submit({"nodes": [], "links": []})
    assert (info.value.status, info.value.field) == (422, "workflow")
    with pytest.raises(ApiError) as info:
        Client(client.routes.submit.removesuffix("/v1/jobs"), api_key="wrong").get("x")
    assert info.value.status == 401


def test_verify_webhook_helper():
    body = b'{"type": "job.completed"}'
    import time

    stamp = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp),
               "webhook-signature": signing.sign("whsec_c2VjcmV0", "msg_1", stamp, body)}
    assert verify_webhook("whsec_c2VjcmV0", headers, body)
    assert not verify_webhook("whsec_c2VjcmV0", headers, body + b" ")
    assert not verify_webhook("whsec_b3RoZXI=", headers, body)


def run_cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "comfy-saas"
    return subprocess.run([str(exe), *args, "--url", server.base, "--api-key", "admin-key"], capture_output=True,
                          text=True, timeout=60)


def test_cli_submit_wait_and_download(server: Server, tmp_path: Path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(SLOW))
    out = run_cli(server, "submit", str(wf), "--set", "1.width=24", "--wait", "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    job_id, path = out.stdout.split()
    assert Image.open(path).size == (24, 16)
    assert "step 5/5" in out.stderr or "completed" in out.stderr  # the progress line
    status = run_cli(server, "status", job_id, "--json")
    assert json.loads(status.stdout)["status"] == "completed"


def test_cli_errors_are_clear_with_non_zero_exit(server: Server, tmp_path: Path):
    missing = run_cli(server, "status", "doesnotexist")
    assert missing.returncode == 2 and "404 not_found" in missing.stderr
    bad = tmp_path / "ui.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))
    refused = run_cli(server, "submit", str(bad))
    assert refused.returncode == 2 and "field workflow" in refused.stderr and "UI-format" in refused.stderr
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({**WORKFLOW, "3": {"class_type": "FailNode", "inputs": {
        "image": ["1", 0], "message": "nope"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "f"}}}))
    failed = run_cli(server, "submit", str(failing), "--wait")
    assert failed.returncode == 1 and "node 3 (FailNode)" in failed.stderr


def test_cli_list_and_cancel(server: Server):
    job_id = Client(server.base, api_key="admin-key").submit(WORKFLOW, pool="idle")["id"]
    assert run_cli(server, "cancel", job_id).stdout.strip() == "cancelled"
    assert job_id in run_cli(server, "list", "--status", "cancelled").stdout


def ops(capsys: pytest.CaptureFixture, data_dir: Path, *args: str) -> tuple[int, dict | str]:
    code = cli.main(["ops", "--data-dir", str(data_dir), *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else captured.err


def test_ops_commands_on_the_local_store(capsys: pytest.CaptureFixture, tmp_path: Path):
    from comfy_saas.config import Settings
    from comfy_saas.jobs.services import local_services

    svc = local_services(Settings(data_dir=tmp_path))
    job = svc.lifecycle.start(submit(svc, workflow=WORKFLOW), "w1")
    svc.store.settle(job.id)
    assert ops(capsys, tmp_path, "queue")[1]["default"] == 1
    code, info = ops(capsys, tmp_path, "inspect", job.id)
    assert code == 0 and info["job"]["status"] == "running" and not info["record_behind"]
    assert info["moves"]["1"]["owner"] == "w1" and info["moves"]["1"]["status"] == "running"
    assert info["heartbeat_age_s"] >= 0
    assert ops(capsys, tmp_path, "requeue", job.id)[1]["status"] == "queued"
    assert ops(capsys, tmp_path, "fail", job.id, "--reason", "bad input")[1]["error"]["type"] == "failed_by_operator"
    code, err = ops(capsys, tmp_path, "fail", job.id)
    assert code == 2 and "already failed" in err
    assert ops(capsys, tmp_path, "purge")[0] == 0


def test_progress_line_shows_percent_node_step_and_eta():
    line = cli.progress_line({"status": "running", "progress": {
        "percent": 50, "node_id": "3", "node_class": "KSampler", "step": 10, "steps": 20, "eta_s": 4.2}})
    assert "50.0%" in line and "node 3 (KSampler)" in line and "step 10/20" in line and "ETA 4s" in line


def test_sse_delivers_progress_in_order_then_the_terminal_event(client: Client):
    # A job shorter than the progress cadence (PROGRESS_WRITE_S) writes no progress at all: this one runs 1 s.
    job_id = client.submit({**SLOW, "2": {**SLOW["2"], "inputs": {**SLOW["2"]["inputs"], "steps": 10}}})["id"]
    events = list(client.stream(job_id))
    seqs = [int(i) for i, kind, _ in events if kind == "progress"]
    assert seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert events[-1][1] == "completed" and events[-1][2]["status"] == "completed"


def test_sse_resumes_after_a_disconnect_without_losing_events(client: Client):
    job_id = client.submit({**SLOW, "2": {**SLOW["2"], "inputs": {**SLOW["2"]["inputs"], "steps": 30}}})["id"]
    first = client._stream_once(job_id, None)
    seen = [next(first), next(first)]
    first.close()  # the connection drops
    rest = list(client.stream(job_id, last_event_id=seen[-1][0]))
    seqs = [int(i) for i, kind, _ in seen + rest if kind == "progress"]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2
    assert rest[-1][1] == "completed"
