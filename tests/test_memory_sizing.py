"""The measurement behind the API containers' memory (deploy.toml [api]): one submit carrying a large job body,
served by the Modal endpoint's handler (routes.endpoint, home "modal") in a server process of its own, peaks
within BODY_COPIES times the body above that process's baseline."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import requests
from conftest import free_port, peak_rss_kb, wait_until

from comfy_saas.config.deploy import BODY_COPIES, MIB

ROOT = Path(__file__).resolve().parent.parent

# The submit endpoint as app.py registers it on Modal, over the twins and a local folder.
SERVER = r"""
import sys
from pathlib import Path
import uvicorn
from fastapi import FastAPI
import modal  # loaded in every Modal container: part of the baseline
from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.jobs.services import Services
from comfy_saas.web import routes
data, port = Path(sys.argv[1]), int(sys.argv[2])
settings = Settings(data_dir=data, url_signing_secret="s", public_base_url="http://127.0.0.1:9", api_keys="key")
svc = Services.over(LocalDict(data / "db"), LocalQueue(data / "db"), settings,
                    LocalStore(data / "outputs", "s", "http://127.0.0.1:9"))
route = next(r for r in routes.ROUTES if r.name == "submit")
app = FastAPI()
app.add_api_route("/", routes.endpoint(route, lambda: svc, "modal"), methods=["POST"])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=0.5).status_code > 0
    except requests.RequestException:
        return False


def test_a_job_body_peaks_within_the_copies_the_sizing_counts(tmp_path: Path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), str(port)], cwd=ROOT,
                              env={**os.environ, "HOME": str(tmp_path)})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: _answers(url), 60, "the endpoint")
        baseline_kb = peak_rss_kb(server.pid)
        media = [{"name": f"in{i}.png", "base64": base64.b64encode(os.urandom(20 * MIB)).decode()} for i in range(3)]
        body = json.dumps({"workflow": WORKFLOW, "media": media}).encode()  # 60 MiB of media, 80 MiB of body
        resp = requests.post(url, data=body, timeout=120,
                             headers={"Authorization": "Bearer key", "Content-Type": "application/json"})
        assert resp.status_code == 201, resp.text[:300]
        peak_mib = (peak_rss_kb(server.pid) - baseline_kb) / 1024
    finally:
        server.terminate()
        server.wait(30)
    assert peak_mib <= BODY_COPIES * len(body) / MIB, f"{peak_mib:.0f} MiB for a {len(body) / MIB:.0f} MiB body"
