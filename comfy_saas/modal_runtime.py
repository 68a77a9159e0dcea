"""What app.py's Modal functions do inside their containers, kept here so app.py is only wiring."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from comfy_saas.config import Settings
from comfy_saas.config.deploy import DeployConfig, installation_report
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.wakeups import Wakeups
from comfy_saas.runner.comfy_process import ComfyProcess
from comfy_saas.runner.worker import Worker, new_worker_id

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_CACHE_SUBDIR = "job-cache"  # the model cache's folder inside the models Volume (ComfyUI does not list it)
JOB_MODELS_DIR = "/tmp/comfy-saas-job-models"  # each container's own links: what its ComfyUI sees by name
COMFY_LOG_PREFIX = "[comfyui] "  # ComfyUI's lines in a container's log (our own are JSON events)


def services(jobs_dict: Any, work_queue: Any, models_volume: Any = None, models_mount: str | None = None) -> Services:
    """The services over the deployed Dict and Queue, with settings from the attached Secrets; the model cache
    on the models Volume (mounted at models_mount in worker containers, reached through its API elsewhere).
    Its `wake` is set by `wakeups()`."""
    from comfy_saas import logs
    from comfy_saas.backends.model_files import VolumeModelFiles

    logs.configure()
    settings = Settings.from_env()
    settings.check_retention(entries_expire=True)
    svc = Services.over(jobs_dict, work_queue, settings)
    if models_volume is not None:
        root = Path(models_mount or "/models") / MODEL_CACHE_SUBDIR
        svc.model_files = VolumeModelFiles(models_volume, root, MODEL_CACHE_SUBDIR, mounted=models_mount is not None)
    return svc


def wakeups(svc: Services, spawn: Callable[[str, int], None]) -> Wakeups:
    """The wake-up component over these services, retrying spawns Modal rate-limits; it becomes svc.wake."""
    import modal.exception

    component = Wakeups(svc.store, spawn, retry_on=(modal.exception.ResourceExhaustedError, TimeoutError))
    svc.wake = component.wake
    return component


def bounded(start: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """Run the coroutine `start()` makes, cancelled after timeout_s (TimeoutError). Bounds one Modal call of
    its own (a spawn waiting out a rate limit) where MODAL_MAX_THROTTLE_WAIT would bound every call of the
    container. From a thread running an event loop, it runs on a thread of its own."""
    import asyncio

    async def run() -> T:
        return await asyncio.wait_for(start(), timeout_s)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(1, thread_name_prefix="bounded") as pool:
        return pool.submit(asyncio.run, run()).result()


def deployed_services() -> Services:
    """Services over the deployed app's Dict, Queue and models Volume by name (needs Modal credentials, as in
    `modal shell`)."""
    import modal

    from comfy_saas.config import names

    return services(modal.Dict.from_name(names.JOBS_DICT), modal.Queue.from_name(names.WORK_QUEUE),
                    models_volume=modal.Volume.from_name(names.MODELS_VOLUME))


def job_model_args(links_dir: str = JOB_MODELS_DIR) -> list[str]:
    """ComfyUI flags that make it read this container's job-model links first (folders made now, before it
    starts, so it records them from the beginning)."""
    from comfy_saas.runner.model_links import ModelLinks

    config = ModelLinks(links_dir).write_config(Path(links_dir) / "extra_model_paths.yaml")
    return ["--extra-model-paths-config", str(config)]


def sweep(svc: Services, wake_all: Callable[[], dict[str, int]]) -> dict[str, int]:
    """The scheduled sweep: lost workers, timeouts, lost wake-ups, webhook retries; then every pool is woken
    (Wakeups.wake_all): drains for pools with queued work and no drain to take it, and each pool's floor."""
    from comfy_saas.jobs import sweeper, webhooks

    done = sweeper.sweep(svc)
    done.update({f"webhook_{k}": v for k, v in webhooks.dispatch(svc, owner="sweep").items()})
    done.update({f"spawned_{pool}": n for pool, n in wake_all().items() if n})
    return dict(done)


def attach_gpu(comfy: ComfyProcess) -> None:
    """After a snapshot restore: move ComfyUI onto the GPU via memory_snapshot_helper's route."""
    req = urllib.request.Request(f"{comfy.url}/cuda/set_device", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        log.info("cuda/set_device: %s", json.loads(resp.read()))


def restored_worker(svc: Services, comfy: ComfyProcess, scratch: Path, warmup_workflow: str = "",
                    model_shadows: list[str] | None = None, pool: str | None = None) -> Worker:
    """A worker of `pool` with a fresh id (never made during the snapshot, so restored containers differ). Job
    models are linked in JOB_MODELS_DIR; `model_shadows` are the other model roots its ComfyUI reads."""
    def unhealthy() -> bool:
        import modal.experimental

        modal.experimental.stop_fetching_inputs()  # this container takes no more drains
        return False

    worker = Worker(svc, comfy.client, worker_id=new_worker_id(), pool=pool, on_unhealthy=unhealthy,
                    scratch_dir=scratch, start_kind="restored", warmup_workflow=warmup_workflow or None,
                    models_dir=JOB_MODELS_DIR, model_shadows=model_shadows)
    worker.prepare()  # this pool's node catalogue, and the warmup, before the first input arrives
    return worker


def warm_checkpoints(comfy: ComfyProcess, checkpoints: list[str], load: bool = False) -> dict[str, Any]:
    """Snapshot phase. Without a GPU, read the checkpoint files through (memory_snapshot_helper's
    /snapshot/warm: no torch, no CUDA), so the snapshot holds their pages and the load after restore finds
    them in memory. With a GPU snapshot (`load`), load them onto the GPU now: the snapshot holds them there.
    What was done: {"warmed": {name: bytes}} or {"loaded": bool}."""
    if not checkpoints:
        return {}
    if load:
        return {"loaded": preload_checkpoints(comfy, checkpoints)}
    body = json.dumps({"checkpoints": checkpoints}).encode()
    req = urllib.request.Request(f"{comfy.url}/snapshot/warm", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # the restore then reads from disk: slower, never wrong
        log.warning("warming checkpoints failed: %s", exc, extra={"event": "snapshot.warm_failed"})
        return {"warmed": {}}
    log.info("snapshot/warm: %s", answer, extra={"event": "snapshot.warmed"})
    return {"warmed": answer.get("warmed", {})}


def preload_checkpoints(comfy: ComfyProcess, checkpoints: list[str], timeout_s: float = 900) -> bool:
    """On the GPU (after restore, or during a GPU snapshot): load the checkpoints into ComfyUI's cache through
    the helper's SnapshotHold node, so the first job finds them loaded. False (logged) if it did not work;
    the job then loads them itself."""
    if not checkpoints:
        return True
    import time

    from comfy_saas.config.deploy import preload_workflow

    prompt_id = f"preload-{time.monotonic_ns()}"
    try:
        comfy.client.queue_prompt(preload_workflow(checkpoints), "preload", prompt_id)
        deadline = time.monotonic() + timeout_s
        while (entry := comfy.client.history(prompt_id)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("preloading checkpoints did not finish")
            time.sleep(0.2)
    except Exception as exc:  # a failed preload costs the first job its head start, never the container
        log.error("preloading %s failed: %s", checkpoints, exc, extra={"event": "worker.preload_failed"})
        return False
    status = entry.get("status", {}).get("status_str")
    log.info("preloaded %s: %s", checkpoints, status, extra={"event": "worker.preloaded"})
    return status == "success"


def verify_setup(config: DeployConfig, comfy_dir: Path, models_dir: Path, port: int, pool: str | None = None
                 ) -> dict[str, Any]:
    """A pool's models and custom nodes present or missing against deploy.toml, and whether ComfyUI starts."""
    report = installation_report(config, comfy_dir, models_dir, pool)
    comfy = ComfyProcess(comfy_dir, port, echo=COMFY_LOG_PREFIX)
    try:
        comfy.start(ready_timeout_s=300)
        report["comfyui_starts"] = True
    except Exception as exc:  # the report says what went wrong rather than failing the check
        report["comfyui_starts"] = False
        report["comfyui_error"] = str(exc)
    finally:
        comfy.stop()
    report["ok"] = report["comfyui_starts"] and not report["models_missing"] and not report["custom_nodes_missing"]
    return report


def extra_model_paths(models_dir: str) -> str:
    """ComfyUI's extra_model_paths.yaml pointing every model folder at the models Volume, on one line
    with printf escapes (an image build step is a single shell line)."""
    kinds = ["checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusion_models", "embeddings",
             "loras", "text_encoders", "unet", "upscale_models", "vae", "vae_approx"]
    return "comfy_saas:\\n  base_path: " + models_dir + "\\n" + "".join(f"  {k}: {k}\\n" for k in kinds)


def write_lines_step(lines: list[str], path: str) -> str:
    """An image build step writing `lines` to `path` as one shell line: a raw newline inside a step would make
    Modal's Dockerfile carry it as a line of its own (tests/test_images_offline.py)."""
    import shlex

    return shlex.join(["printf", "%s\\n", *lines]) + f" > {shlex.quote(path)}"
