"""The editor's own routes as the ComfyUI frontend calls them: per-user files and settings in object storage
(two keys never see each other's, a new server over the same storage still has them), the custom nodes' web
files, and the editor living beside every other surface without taking their paths."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import ADMIN, ALICE, BOB, running_server

from comfy_saas.config.settings import Limits
from comfy_saas.native import editor_extensions
from comfy_saas.native.editor import frontend_root

WORKFLOW = json.dumps({"last_node_id": 2, "nodes": [], "links": [], "version": 0.4}).encode()


def _put(server, path: str, body: bytes, headers: dict, query: str = "") -> object:
    return server.call("POST", f"/api/userdata/{path}{query}", headers, data=body)


def test_a_saved_workflow_is_listed_read_renamed_and_deleted(server) -> None:
    saved = _put(server, "workflows%2Fround%20trip.json", WORKFLOW, ALICE, "?overwrite=true&full_info=true")
    assert saved.status_code == 200
    assert saved.json()["path"] == "workflows/round trip.json" and saved.json()["size"] == len(WORKFLOW)
    listed = server.call("GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true", ALICE).json()
    assert [(f["path"], f["size"]) for f in listed] == [("round trip.json", len(WORKFLOW))]
    assert listed[0]["modified"] >= listed[0]["created"] > 0
    got = server.call("GET", "/api/userdata/workflows%2Fround%20trip.json", ALICE)
    assert got.content == WORKFLOW and got.headers["content-disposition"] == "attachment"
    assert got.headers["x-content-type-options"] == "nosniff"
    again = _put(server, "workflows%2Fround%20trip.json", b"{}", ALICE, "?overwrite=false")
    assert again.status_code == 409
    moved = server.call("POST", "/api/userdata/workflows%2Fround%20trip.json/move/workflows%2Frenamed.json"
                        "?overwrite=false", ALICE)
    assert moved.status_code == 200 and moved.json() == "workflows/renamed.json"
    assert server.call("GET", "/userdata?dir=workflows", ALICE).json() == ["renamed.json"]
    assert server.call("GET", "/api/userdata/workflows%2Fround%20trip.json", ALICE).status_code == 404
    assert server.call("DELETE", "/api/userdata/workflows%2Frenamed.json", ALICE).status_code == 204
    assert server.call("GET", "/userdata?dir=workflows", ALICE).status_code == 404  # as ComfyUI: no such dir


def test_settings_merge_per_user(server) -> None:
    assert server.call("POST", "/api/settings", ALICE, json={"Comfy.Locale": "en", "Comfy.A": 1}).status_code == 200
    assert server.call("POST", "/api/settings/Comfy.B", ALICE, json={"x": [1, 2]}).status_code == 200
    assert server.call("GET", "/api/settings", ALICE).json() == {"Comfy.Locale": "en", "Comfy.A": 1,
                                                                 "Comfy.B": {"x": [1, 2]},
                                                                 "Comfy.TutorialCompleted": True}
    assert server.call("GET", "/settings/Comfy.B", ALICE).json() == {"x": [1, 2]}
    assert server.call("GET", "/settings/Comfy.Nope", ALICE).json() is None
    assert server.call("GET", "/api/users", ALICE).json() == {"storage": "server", "migrated": True}


def test_two_keys_files_and_settings_never_cross(server) -> None:
    assert _put(server, "workflows%2Fsecret.json", b'{"who": "alice"}', ALICE).status_code == 200
    server.call("POST", "/api/settings/Comfy.Who", ALICE, json="alice")
    assert server.call("GET", "/api/userdata/workflows%2Fsecret.json", BOB).status_code == 404
    assert server.call("GET", "/api/userdata?dir=workflows", BOB).status_code == 404
    assert "Comfy.Who" not in server.call("GET", "/api/settings", BOB).json()
    assert server.call("DELETE", "/api/userdata/workflows%2Fsecret.json", BOB).status_code == 404
    moved = server.call("POST", "/api/userdata/workflows%2Fsecret.json/move/workflows%2Fmine.json", BOB)
    assert moved.status_code == 404
    # The same name is each key's own file; a key bound to no user (the admin's) has its own too.
    assert _put(server, "workflows%2Fsecret.json", b'{"who": "bob"}', BOB).status_code == 200
    assert server.call("GET", "/api/userdata?dir=workflows", ADMIN).status_code == 404
    assert server.call("GET", "/api/userdata/workflows%2Fsecret.json", ALICE).json() == {"who": "alice"}
    assert server.call("GET", "/api/userdata/workflows%2Fsecret.json", BOB).json() == {"who": "bob"}
    assert server.call("GET", "/api/settings/Comfy.Who", ALICE).json() == "alice"
    assert server.call("GET", "/api/userdata/workflows%2Fsecret.json", {}).status_code == 401


def test_files_live_in_object_storage_and_outlive_the_server(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(max_userdata_bytes=64, max_userdata_files=2)) as first:
        assert _put(first, "workflows%2Fkept.json", b'{"kept": true}', ALICE).status_code == 200
        stored = first.stack.services.objects.list_keys("userdata/")
        assert len(stored) == 1 and stored[0].endswith("/data")
        too_big = _put(first, "big.json", b"x" * 65, ALICE)
        assert too_big.status_code == 413 and "64 bytes" in too_big.json()["error"]["message"]
        escape = _put(first, "..%2Foutside.json", b"{}", ALICE)
        assert escape.status_code == 422 and escape.json()["error"]["field"] == "file"
        assert _put(first, "second.json", b"{}", ALICE).status_code == 200
        full = _put(first, "third.json", b"{}", ALICE)
        assert full.status_code == 422 and "2 files" in full.json()["error"]["message"]
        assert len(first.stack.services.objects.list_keys("userdata/")) == 2  # nothing half-stored
    with running_server(tmp_path) as second:  # a new process over the same storage: scale-to-zero and back
        assert second.call("GET", "/api/userdata/workflows%2Fkept.json", ALICE).json() == {"kept": True}


def test_custom_node_web_files_published_with_the_catalogue_are_served(server, tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "js").mkdir(parents=True)
    (web / "js" / "widget.js").write_text("export const hello = 1;\n")
    (web / "style.css").write_text("body {}\n")
    svc = server.stack.services
    assert editor_extensions.publish(svc, svc.settings.default_pool, {"my pack": web}) == [
        "my pack/js/widget.js", "my pack/style.css"]
    listed = server.call("GET", "/api/extensions", ALICE).json()
    assert "/extensions/my%20pack/js/widget.js" in listed and "/extensions/my%20pack/style.css" not in listed
    script = server.call("GET", "/extensions/my%20pack/js/widget.js", {})
    assert script.text == "export const hello = 1;\n"
    assert script.headers["content-type"].startswith("application/javascript")
    assert server.call("GET", "/extensions/other/none.js", {}).status_code == 404
    if frontend_root() is not None:  # the frontend's own extension scripts come first, as in ComfyUI
        assert listed[0].startswith("/extensions/core/")


def test_the_editor_takes_no_other_surface_s_paths(server) -> None:
    assert server.call("GET", "/v1/nope").json()["error"]["type"] == "not_found"
    assert server.call("GET", "/api/v2/nope").status_code == 404
    assert server.call("POST", "/health").status_code == 405
    assert server.call("GET", "/docs").status_code == 200
    assert server.call("GET", "/files/nope").status_code in {400, 403, 404}
    assert server.call("GET", "/templates/index.json", {}).json() == []
    assert server.call("GET", "/api/i18n", ALICE).json() == {}
    assert server.call("GET", "/api/workflow_templates", ALICE).json() == {}


def test_the_editor_page_asks_a_browser_for_the_key(server) -> None:
    if frontend_root() is None:
        assert "comfy-saas[editor]" in server.call("GET", "/", {}).text
        pytest.skip("the editor extra is not installed")
    challenge = server.call("GET", "/", {})
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(b"any:alice-key").decode()
    page = server.call("GET", "/", {"Authorization": basic})
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
    assert page.headers["cache-control"] == "no-cache"
    script = next(line for line in page.text.split('"') if line.startswith("./assets/") and line.endswith(".js"))
    asset = server.call("GET", script[1:], {})
    assert asset.headers["content-type"].startswith("application/javascript")
    assert asset.headers["cache-control"] == "no-cache"


def test_a_browser_without_headers_uses_the_key_prefix(server) -> None:
    # The editor opened at /k/<key>/ sends every call below that prefix, file names as one %2F segment.
    saved = server.call("POST", "/k/bob-key/api/userdata/workflows%2Fvia%20prefix.json?overwrite=true", {},
                        data=b'{"via": "prefix"}')
    assert saved.status_code == 200 and saved.json() == "workflows/via prefix.json"
    assert server.call("GET", "/api/userdata/workflows%2Fvia%20prefix.json", BOB).json() == {"via": "prefix"}
    moved = server.call("POST", "/k/bob-key/api/userdata/workflows%2Fvia%20prefix.json/move/"
                        "workflows%2Fmoved.json", {})
    assert moved.json() == "workflows/moved.json"
    listed = server.call("GET", "/k/bob-key/api/userdata?dir=workflows", {}).json()
    assert "moved.json" in listed and "via prefix.json" not in listed
    assert server.call("GET", "/k/wrong-key/api/settings", {}).status_code == 401


def test_the_model_library_lists_the_pool_s_folders(server) -> None:
    folders = server.call("GET", "/api/experiment/models", ALICE).json()
    names = [f["name"] for f in folders]
    assert "checkpoints" in names and "configs" not in names
    assert all(f["folders"] == [] for f in folders)
    files = server.call("GET", "/api/experiment/models/checkpoints", ALICE)
    assert files.status_code == 200 and all(set(f) == {"name", "pathIndex"} for f in files.json())
    assert server.call("GET", "/api/experiment/models/nope", ALICE).status_code == 404


def test_settings_stored_at_once_are_all_kept(server) -> None:
    # The editor stores several settings in parallel when it starts; each is a read-modify-write of one file.
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"Comfy.Parallel{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: server.call("POST", f"/api/settings/{i}", BOB, json=i), ids))
    assert all(a.status_code == 200 for a in answers)
    stored = server.call("GET", "/api/settings", BOB).json()
    assert {i: stored.get(i) for i in ids} == {i: i for i in ids}


def test_a_worker_copies_its_comfyui_s_custom_node_scripts(server) -> None:
    # A stand-in for the worker's ComfyUI: its /extensions lists the frontend's own scripts and a pack's.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {"/extensions": json.dumps(["/extensions/core/clipspace.js", "/extensions/nice%20nodes/main.js"]),
             "/extensions/nice%20nodes/main.js": "console.log('nice');\n"}

    class ComfyUI(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path, "").encode()
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    comfy = ThreadingHTTPServer(("127.0.0.1", 0), ComfyUI)
    threading.Thread(target=comfy.serve_forever, daemon=True).start()
    try:
        svc = server.stack.services
        url = f"http://127.0.0.1:{comfy.server_address[1]}"
        assert editor_extensions.publish_from_comfyui(svc, "idle", url) == ["nice nodes/main.js"]
    finally:
        comfy.shutdown()
        comfy.server_close()
    # The "idle" pool's editor (a /p/ prefix picks it) loads the script while no worker of that pool runs.
    assert "/extensions/nice%20nodes/main.js" in server.call("GET", "/p/idle/api/extensions", ALICE).json()
    assert server.call("GET", "/p/idle/extensions/nice%20nodes/main.js", {}).text == "console.log('nice');\n"
    assert server.call("GET", "/extensions/nice%20nodes/main.js", {}).status_code == 404  # the default pool's: none


def test_bad_settings_are_refused_whole(server) -> None:
    assert server.call("POST", "/api/settings", ALICE, data=b"{not json").status_code == 422
    refused = server.call("POST", "/api/settings", ALICE, json=["not", "an", "object"])
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "settings"
    assert server.call("POST", "/api/settings/Comfy.X", {}, json=1).status_code == 401
    assert "Comfy.X" not in server.call("GET", "/api/settings", ALICE).json()
