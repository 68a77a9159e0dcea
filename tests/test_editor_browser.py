"""The ComfyUI editor in a real browser: Debian's chromium, driven by Playwright (pinned in the dev extra, never
`playwright install`: `make test` installs chromium with apt-get), opens the editor from `comfy-saas serve`,
loads examples/first_job.json, queues it from the editor, and shows the image the job made on our pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from conftest import ALICE, free_port, start_serve

from comfy_saas.native.editor import frontend_root

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRAPH = json.loads((Path(__file__).parent.parent / "examples" / "first_job.json").read_text())

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: `make test` installs "
                                                               "it as root (apt-get install chromium)")

# The SaveImage node (id 2) has its output once the editor has fetched the image from /view and decoded it.
IMAGE_SHOWN = """() => {
  const node = window.app.graph.getNodeById(2);
  const img = node && node.imgs && node.imgs[0];
  return Boolean(img && img.complete && img.naturalWidth > 0) && img.src;
}"""


@pytest.fixture
def serve(tmp_path: Path):
    """`comfy-saas serve` with one key (alice's), as a user runs it."""
    port = free_port()
    proc, lines = start_serve(tmp_path / "data", port, env={"COMFY_API_KEYS": "alice-key:alice"})
    try:
        assert proc.poll() is None, "".join(lines)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("sign_in", ["key in the path", "key as the password"])
def test_the_editor_queues_a_graph_on_the_pool_and_shows_its_image(serve: str, tmp_path: Path, sign_in: str) -> None:
    if frontend_root() is None:
        pytest.skip("the editor extra (comfyui-frontend-package) is not installed")
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "editor.png"
    # The editor opens with its default graph, whose nodes the stand-in's pool lacks; a setting stored for the
    # user beforehand (the editor reads it from the server) keeps the "missing nodes" dialog away.
    quiet = requests.post(f"{serve}/api/settings/Comfy.Workflow.ShowMissingNodesWarning", json=False, headers=ALICE,
                          timeout=10)
    assert quiet.status_code == 200
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
            # The editor is usable once the pool's nodes (its /object_info) are registered.
            page.wait_for_function("() => window.app && window.app.vueAppReady && window.LiteGraph"
                                   " && LiteGraph.registered_node_types.SaveImage", timeout=30_000)
            page.evaluate("async graph => { await window.app.loadApiJson(graph, 'first_job.json') }", GRAPH)
            page.get_by_role("button", name="Run", exact=True).click()
            src = page.wait_for_function(IMAGE_SHOWN, timeout=30_000).json_value()
            page.screenshot(path=str(shot))
            # Saving goes through the editor's own dialog into the user's files (object storage).
            # (not awaited: the command's promise settles only once the dialog is answered)
            page.evaluate("() => { window.app.extensionManager.command.execute('Comfy.SaveWorkflow') }")
            name = page.get_by_role("dialog").get_by_role("textbox")
            name.fill("from the browser")
            with page.expect_response(lambda r: "/userdata/workflows" in r.url and r.request.method == "POST") as save:
                name.press("Enter")
            assert save.value.status == 200
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert "/view?" in src and "hello" in src, src
    assert not failed, failed
    history = requests.get(f"{serve}/api/history", headers=ALICE, timeout=10).json()
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"]["images"][0]["filename"].startswith(
        "hello")
    saved = requests.get(f"{serve}/api/userdata?dir=workflows", headers=ALICE, timeout=10)
    assert saved.json() == ["from the browser.json"]
