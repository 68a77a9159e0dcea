"""The ComfyUI editor in a real browser: Debian's chromium, driven by Playwright (pinned in the dev extra, never
`playwright install`: `make test` installs chromium with apt-get), opens the editor from `comfy-saas serve`,
loads examples/first_job.json, queues it from the editor, and shows the image the job made on our pool; a slow
graph shows its progress while it runs. Each test saves a screenshot (its path is printed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import ALICE, free_port, start_serve

from comfy_saas.native.editor import frontend_root

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRAPH = json.loads((Path(__file__).parent.parent / "examples" / "first_job.json").read_text())
# A graph of the stand-in's nodes that takes a few seconds, reporting progress (and a preview) at each step.
SLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF0000}},
        "3": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": 6, "delay": 0.4,
                                                          "send_preview": True, "send_text": False, "seed": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "slow"}}}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: `make test` installs "
                                                               "it as root (apt-get install chromium)")

# The SaveImage node (id 2) has its output once the editor has fetched the image from /view and decoded it.
IMAGE_SHOWN = """() => {
  const node = window.app.graph.getNodeById(2);
  const img = node && node.imgs && node.imgs[0];
  return Boolean(img && img.complete && img.naturalWidth > 0) && img.src;
}"""
# What the editor's API object (the frontend's `api`) dispatched while the graph ran.
RECORD = """() => {
  const seen = window.__seen = {progress: []};
  window.comfyAPI.api.api.addEventListener("progress", e => seen.progress.push(e.detail));
}"""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """`comfy-saas serve` with one key (alice's), as a user runs it."""
    if frontend_root() is None:
        pytest.skip("the editor extra (comfyui-frontend-package) is not installed")
    port = free_port()
    proc, lines = start_serve(tmp_path / "data", port, env={"COMFY_API_KEYS": "alice-key:alice"})
    try:
        assert proc.poll() is None, "".join(lines)
        # The editor opens with its default graph, whose nodes the stand-in's pool lacks; a setting stored for
        # the user beforehand (the editor reads it from the server) keeps the "missing nodes" dialog away.
        quiet = requests.post(f"http://127.0.0.1:{port}/api/settings/Comfy.Workflow.ShowMissingNodesWarning",
                              json=False, headers=ALICE, timeout=10)
        assert quiet.status_code == 200
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def editor(serve: str, tmp_path: Path, sign_in: str = "key in the path") -> Iterator[object]:
    """A page with the editor loaded and the pool's nodes registered; its screenshot saved on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # The password is what a user types when the browser asks (the page answers 401 with a Basic challenge).
        password = {"http_credentials": {"username": "me", "password": "alice-key"}} if "password" in sign_in else {}
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=ARGS, headless=True,
            viewport={"width": 1280, "height": 800}, **password)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            failed: list[str] = []
            page.on("response", lambda r: r.status >= 500 and failed.append(f"{r.status} {r.url}"))
            # The /k/<key>/ prefix carries the key without a header: every call the editor makes (HTTP and the
            # WebSocket) is relative to the page, so it keeps the prefix. Signed in with Basic, the browser sends
            # the credentials on every call to the origin, the socket included.
            page.goto(f"{serve}/k/alice-key/" if "path" in sign_in else f"{serve}/")
            page.wait_for_function("() => window.app && window.app.vueAppReady && window.LiteGraph"
                                   " && LiteGraph.registered_node_types.SaveImage", timeout=30_000)
            yield page
            page.screenshot(path=str(tmp_path / "editor.png"))
            print(f"screenshot: {tmp_path / 'editor.png'}")
            assert not failed, failed
        finally:
            browser.close()


def run(page: object, graph: dict) -> str:
    """Load an API-format graph into the editor, press Run, and wait for the image SaveImage (node 2) shows."""
    page.evaluate("async graph => { await window.app.loadApiJson(graph, 'graph.json') }", graph)
    page.get_by_role("button", name="Run", exact=True).click()
    return page.wait_for_function(IMAGE_SHOWN, timeout=30_000).json_value()


@pytest.mark.parametrize("sign_in", ["key in the path", "key as the password"])
def test_the_editor_queues_a_graph_on_the_pool_and_shows_its_image(serve: str, tmp_path: Path, sign_in: str) -> None:
    with editor(serve, tmp_path, sign_in) as page:
        src = run(page, GRAPH)
        # Saving goes through the editor's own dialog into the user's files (object storage).
        # (not awaited: the command's promise settles only once the dialog is answered)
        page.evaluate("() => { window.app.extensionManager.command.execute('Comfy.SaveWorkflow') }")
        name = page.get_by_role("dialog").get_by_role("textbox")
        name.fill("from the browser")
        with page.expect_response(lambda r: "/userdata/workflows" in r.url and r.request.method == "POST") as save:
            name.press("Enter")
        assert save.value.status == 200
    assert "/view?" in src and "hello" in src, src
    history = requests.get(f"{serve}/api/history", headers=ALICE, timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"]["images"][0]["filename"].startswith(
        "hello")
    saved = requests.get(f"{serve}/api/userdata?dir=workflows", headers=ALICE, timeout=10)
    assert saved.json() == ["from the browser.json"]


def test_a_running_graph_shows_its_progress(serve: str, tmp_path: Path) -> None:
    # Preview frames are not asserted: no worker stores them yet (the store reads keys.preview, nothing writes it).
    with editor(serve, tmp_path) as page:
        page.evaluate(RECORD)
        src = run(page, SLOW)
        seen = page.evaluate("() => window.__seen")
    assert "slow" in src, src
    assert seen["progress"], seen
    assert all(p["max"] == 6 and 1 <= p["value"] <= 6 and p["node"] == "3" for p in seen["progress"]), seen
