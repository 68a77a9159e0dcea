"""Models and LoRAs by URL, through the local stack: a local file server that counts downloads, workers on
the ComfyUI double (whose loaders list and read the model folders), and the API."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ADMIN, ALICE, Server, running_server, wait_until
from modelfiles import FileServer, blob, cache_files, file_server, sha
from PIL import Image

from comfy_saas.config import ModelCacheConfig

CKPT, LORA, OTHER = blob("checkpoint", 4096), blob("lora-style"), blob("lora-other")
FILES = {"/ckpt/base.safetensors": CKPT, "/lora/style.safetensors": LORA, "/lora/other.safetensors": OTHER,
         "/lora/third.safetensors": blob("lora-third")}
FAST = {"private_url_allowlist": "127.0.0.1/32", "cancel_poll_s": 0.1}


def lora_workflow(lora: str = "style.safetensors") -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                         "strength_model": 1.0, "strength_clip": 1.0}},
            "3": {"class_type": "ModelSwatch", "inputs": {"model": ["2", 0], "width": 8, "height": 8}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "swatch"}}}


def render(n: str, steps: int = 1) -> dict:
    """Checkpoint n.safetensors drawn as a swatch (slowly, with many steps)."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{n}.safetensors"}},
            "2": {"class_type": "ModelSwatch", "inputs": {"model": ["1", 0], "width": 8, "height": 8}},
            "3": {"class_type": "SlowPassthrough", "inputs": {"image": ["2", 0], "steps": steps, "delay": 0.05,
                                                              "send_preview": False, "send_text": False,
                                                              "seed": 0}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": n}}}


def models(files: FileServer, lora_path: str = "/lora/style.safetensors", **lora: str) -> list[dict]:
    return [{"url": files.url("/ckpt/base.safetensors"), "folder": "checkpoints"},
            {"url": files.url(lora_path), "folder": "loras", **lora}]


def swatch(job: dict) -> tuple[int, int, int]:
    """The colour of the job's output image: the digest of the model the workflow loaded."""
    data = requests.get(job["outputs"][0]["url"], timeout=10).content
    return Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with file_server(FILES) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers, each with its own double; fast polling for the waits."""
    cfg = ModelCacheConfig(poll_s=0.05, claim_ttl_s=30.0)
    with running_server(tmp_path_factory.mktemp("data"), workers=2, model_cache=cfg, **FAST) as server:
        yield server


def submit(server: Server, workflow: dict, model_list: list[dict], **extra) -> str:
    answer = server.call("POST", "/v1/jobs", json={"workflow": workflow, "models": model_list, **extra})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def job(server: Server, job_id: str) -> dict:
    return server.call("GET", f"/v1/jobs/{job_id}").json()


def test_concurrent_jobs_download_a_file_once_and_later_jobs_not_at_all(stack: Server, files: FileServer):
    held = files.hold("/lora/style.safetensors")
    first, second = (submit(stack, lora_workflow(), models(files, sha256=sha(LORA))) for _ in range(2))

    def both_on_the_lora() -> list[dict] | None:
        progress = [job(stack, j).get("progress") or {} for j in (first, second)]
        on_lora = all(p.get("file") == "loras/style.safetensors" for p in progress)
        return progress if on_lora and any(p["bytes_done"] == len(LORA) // 2 for p in progress) else None

    # One job streams it (half of it so far, as the server holds the rest); the other waits on its claim.
    downloading = wait_until(both_on_the_lora, 20, "both jobs in the download phase of the LoRA")
    streaming = next(p for p in downloading if p["phase"] == "download")
    assert streaming["percent"] == 50.0 and streaming["bytes_total"] == len(LORA)
    assert {p["phase"] for p in downloading} == {"download", "download_wait"}
    held.set()
    done = [stack.done(j) for j in (first, second)]
    assert [d["status"] for d in done] == ["completed", "completed"], done
    assert files.gets["/lora/style.safetensors"] == 1 and files.gets["/ckpt/base.safetensors"] == 1
    assert sorted(d["timings"]["download_bytes"] for d in done) in ([0, len(LORA) + len(CKPT)],
                                                                   [len(CKPT), len(LORA)], [0, len(LORA)])
    assert all(d["timings"]["download_ms"] is not None for d in done)
    assert swatch(done[0]) == swatch(done[1])

    third = stack.done(submit(stack, lora_workflow(), models(files)))  # no sha256: the URL is remembered
    assert third["status"] == "completed" and third["timings"]["download_bytes"] == 0
    assert files.gets["/lora/style.safetensors"] == 1 and swatch(third) == swatch(done[0])

    listed = {m["sha256"]: m for m in stack.call("GET", "/v1/models").json()["models"]}
    assert listed[sha(LORA)]["size_bytes"] == len(LORA) and listed[sha(CKPT)]["size_bytes"] == len(CKPT)
    assert listed[sha(LORA)]["folder"] == "loras" and listed[sha(LORA)]["name"] == "style.safetensors"
    assert listed[sha(LORA)]["url"] == files.url("/lora/style.safetensors") and listed[sha(LORA)]["last_used_at"]


def test_a_cancelled_download_keeps_nothing_and_a_waiting_job_takes_it_over(stack: Server, files: FileServer):
    path = "/lora/cancelled.safetensors"
    files.files[path] = blob("cancelled")
    held = files.hold(path)
    jobs = [submit(stack, lora_workflow("cancelled.safetensors"), models(files, path)) for _ in range(2)]

    def downloader() -> str | None:
        progress = {j: job(stack, j).get("progress") or {} for j in jobs}
        if all(p.get("file") == "loras/cancelled.safetensors" for p in progress.values()):
            return next((j for j, p in progress.items() if p["phase"] == "download"
                         and p["bytes_done"] == len(files.files[path]) // 2), None)
        return None

    streaming = wait_until(downloader, 20, "one job streaming the file, the other waiting")
    stack.call("POST", f"/v1/jobs/{streaming}/cancel")
    assert stack.done(streaming)["status"] == "cancelled"  # at once, although its read was stalled
    held.set()
    [waiting] = [j for j in jobs if j != streaming]
    assert stack.done(waiting)["status"] == "completed"
    assert files.gets[path] == 2
    assert cache_files(stack.stack.settings.model_cache_dir() / "tmp") == []


def test_the_lora_changes_the_output_and_a_taken_name_gets_an_alias(stack: Server, files: FileServer):
    plain = stack.done(submit(stack, lora_workflow("other.safetensors"), models(files, "/lora/other.safetensors")))
    # The same name with other content: each worker's ComfyUI already knows style.safetensors as LORA.
    renamed = [stack.done(submit(stack, lora_workflow(), models(files, "/lora/other.safetensors",
                                                                   name="style.safetensors"))) for _ in range(2)]
    original = stack.done(submit(stack, lora_workflow(), models(files)))
    assert [j["status"] for j in (plain, *renamed, original)] == ["completed"] * 4
    assert swatch(renamed[0]) == swatch(renamed[1]) == swatch(plain) != swatch(original)


def test_a_wrong_sha256_fails_the_job_naming_both_hashes_and_keeps_nothing(tmp_path: Path, files: FileServer):
    wrong = "0" * 64
    with running_server(tmp_path, **FAST) as server:
        failed = server.done(submit(server, render("third"), [{"url": files.url("/lora/third.safetensors"),
                                                                "folder": "checkpoints", "sha256": wrong}]))
        assert failed["status"] == "failed" and failed["error"]["type"] == "model_error"
        message, actual = failed["error"]["message"], sha(FILES["/lora/third.safetensors"])
        assert wrong in message and actual in message and files.url("/lora/third.safetensors") in message
        assert failed["error"]["details"] == [{"url": files.url("/lora/third.safetensors"),
                                               "expected_sha256": wrong, "actual_sha256": actual}]
        assert server.call("GET", "/v1/models").json() == {"models": []}
    assert cache_files(tmp_path / "models-cache") == []


def test_an_http_error_fails_the_job_naming_the_url(stack: Server, files: FileServer):
    failed = stack.done(submit(stack, render("gone"), [{"url": files.url("/lora/gone.safetensors"),
                                                        "folder": "checkpoints"}]))
    assert failed["error"]["type"] == "model_error"
    message = failed["error"]["message"]
    assert "HTTP 404" in message and files.url("/lora/gone.safetensors") in message


def test_private_and_loopback_model_urls_are_refused_at_submit(server: Server):
    body = {"workflow": lora_workflow(), "models": [{"url": "http://127.0.0.1:9/x.safetensors", "folder": "loras"}]}
    answer = server.call("POST", "/v1/jobs", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "models[0].url"
    assert "loopback" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("model", "field"), [
    ({"url": "https://example.com/m", "folder": "loras"}, "models[0].name"),
    ({"url": "https://example.com/m.safetensors", "folder": "custom_nodes"}, "models[0].folder"),
    ({"url": "https://example.com/m.safetensors", "folder": "loras", "name": "../m.safetensors"}, "models[0].name"),
    ({"url": "https://example.com/m.safetensors", "folder": "loras", "sha256": "abc"}, "models[0].sha256"),
])
def test_bad_model_entries_are_refused_naming_the_field(server: Server, model: dict, field: str):
    answer = server.call("POST", "/v1/jobs", json={"workflow": lora_workflow(), "models": [model]})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


def test_only_unbound_keys_see_the_model_cache(stack: Server):
    assert stack.call("GET", "/v1/models", ALICE).status_code == 404
    assert stack.call("DELETE", f"/v1/models/{sha(LORA)}", ALICE).status_code == 404
    assert stack.call("DELETE", f"/v1/models/{'f' * 64}", ADMIN).status_code == 404


def test_eviction_never_removes_a_file_a_running_job_uses(tmp_path: Path, files: FileServer):
    big = {name: blob(name, 40 * 1024) for name in ("x", "y", "z")}
    files.files.update({f"/big/{n}.safetensors": data for n, data in big.items()})
    cfg = ModelCacheConfig(poll_s=0.05, budget_bytes=60 * 1024)

    def as_checkpoint(n: str) -> list[dict]:
        return [{"url": files.url(f"/big/{n}.safetensors"), "folder": "checkpoints"}]

    with running_server(tmp_path, workers=2, model_cache=cfg, **FAST) as server:
        def cached() -> set[str]:
            return {m["sha256"] for m in server.call("GET", "/v1/models").json()["models"]}

        running = submit(server, render("x", steps=10_000), as_checkpoint("x"))
        wait_until(lambda: (job(server, running).get("progress") or {}).get("node_class") == "SlowPassthrough", 20,
                   "x in use by a running job")
        assert server.done(submit(server, render("y"), as_checkpoint("y")))["status"] == "completed"
        assert cached() == {sha(big["x"]), sha(big["y"])}  # over budget, but x is in use
        assert server.call("DELETE", f"/v1/models/{sha(big['x'])}").status_code == 409
        assert job(server, running)["status"] == "running"

        server.call("POST", f"/v1/jobs/{running}/cancel")
        assert server.done(running)["status"] == "cancelled"
        assert server.done(submit(server, render("z"), as_checkpoint("z")))["status"] == "completed"
        assert cached() == {sha(big["z"])}  # x and y were least recently used
        assert server.call("DELETE", f"/v1/models/{sha(big['z'])}").json() == {"sha256": sha(big["z"]),
                                                                               "deleted": True}
        assert cached() == set()
    assert cache_files(tmp_path / "models-cache") == []


def test_a_real_comfyui_lists_the_downloaded_lora(tmp_path: Path, files: FileServer):
    """Against a real ComfyUI when COMFYUI_DIR (or COMFY_COMFYUI_DIR) names one; skipped otherwise."""
    comfy_dir = os.environ.get("COMFYUI_DIR") or os.environ.get("COMFY_COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run this against the real thing")
    from comfy_saas.config import ComfyUISource

    python = os.environ.get("COMFYUI_PYTHON") or os.environ.get("COMFY_COMFYUI_PYTHON") or ""
    source = ComfyUISource(dir=comfy_dir, python=python, args=os.environ.get("COMFY_COMFYUI_ARGS", "--cpu"))
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "real"}}}
    with running_server(tmp_path, comfyui=source, **FAST) as server:
        name = f"job-{os.getpid()}.safetensors"
        done = server.done(submit(server, workflow, [{"url": files.url("/lora/style.safetensors"), "folder": "loras",
                                                      "name": name}]))
        assert done["status"] == "completed", done
        client = server.stack.workers[0].comfy
        assert name in client.object_info()["LoraLoader"]["input"]["required"]["lora_name"][0]
