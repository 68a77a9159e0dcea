"""Modal wiring only: named resources, images, web endpoints, remote functions, the worker pool, schedules.

Every function here hands over to plain code (http_api, api, worker, sweeper, cleanup, modal_runtime).
How workers wake: each accepted submission spawns `ComfyWorker.drain` for its pool. Modal runs at most
`max_containers` of them at once; each drain takes jobs back to back until the queue has been empty
for `drain_idle_s`, so a burst of N jobs is served by min(N, max_containers) warm containers and idle
GPUs are released. The sweeper re-enqueues (and re-wakes) jobs whose wake-up was lost.
"""

from __future__ import annotations

import functools
from pathlib import Path

import modal
from fastapi import Request

import deploy_config
import modal_runtime

APP_NAME = "comfy-saas"
CONFIG = deploy_config.load()
COMFY_DIR = "/root/comfy/ComfyUI"
MODELS_DIR = "/models"
LOCAL_MODULES = ["api", "cleanup", "comfy_client", "comfy_process", "deploy_config", "errors", "http_api",
                 "models", "modal_runtime", "object_store", "outputs", "progress", "safe_fetch", "settings",
                 "storage", "sweeper", "twins", "webhooks", "worker", "workflow", "metrics", "logs", "preflight"]

app = modal.App(APP_NAME)

# --- every named Modal object, declared once -------------------------------------------------------
jobs_dict = modal.Dict.from_name(f"{APP_NAME}-jobs", create_if_missing=True)
work_queue = modal.Queue.from_name(f"{APP_NAME}-work", create_if_missing=True)
api_keys_secret = modal.Secret.from_name(f"{APP_NAME}-api")  # COMFY_API_KEYS
r2_secret = modal.Secret.from_name(f"{APP_NAME}-r2")  # R2_BUCKET, R2_ENDPOINT_URL, R2_ACCESS_KEY_ID, ...
webhook_secret = modal.Secret.from_name(f"{APP_NAME}-webhook")  # COMFY_WEBHOOK_SECRET
models_volume = modal.Volume.from_name(f"{APP_NAME}-models", create_if_missing=True)
SECRETS = [api_keys_secret, r2_secret, webhook_secret]

# --- images --------------------------------------------------------------------------------------
RUNTIME_ENV = {"COMFY_STORAGE_BACKEND": "s3", "COMFY_DATA_DIR": "/tmp/comfy-saas"}

api_image = (
    modal.Image.debian_slim(python_version=CONFIG.comfyui.python)
    .pip_install("pydantic>=2.7,<3", "boto3>=1.34", "fastapi[standard]>=0.110", "websocket-client>=1.7")
    .env(RUNTIME_ENV)
    .add_local_file("deploy.toml", "/root/deploy.toml")
    .add_local_python_source(*LOCAL_MODULES)
)

pin = CONFIG.comfyui
gpu_image = (
    modal.Image.debian_slim(python_version=pin.python)
    .apt_install("git", "ffmpeg", "libgl1", "libglib2.0-0")
    .pip_install(f"torch=={pin.torch}", f"torchvision=={pin.torchvision}", index_url=pin.torch_index_url)
    .pip_install("pydantic>=2.7,<3", "boto3>=1.34", "websocket-client>=1.7", "fastapi>=0.110",
                 "huggingface_hub[hf_transfer]>=0.24")
    .run_commands(
        f"git clone {pin.repo} {COMFY_DIR}",
        f"cd {COMFY_DIR} && git checkout {pin.commit}",
        f"pip install -r {COMFY_DIR}/requirements.txt",
        *[f"git clone {n.repo} {COMFY_DIR}/custom_nodes/{n.name} && cd {COMFY_DIR}/custom_nodes/{n.name} && "
          f"git checkout {n.ref} && (test ! -f requirements.txt || pip install -r requirements.txt)"
          for n in CONFIG.custom_nodes],
        f"printf '{modal_runtime.extra_model_paths(MODELS_DIR)}' > {COMFY_DIR}/extra_model_paths.yaml",
    )
    .env({**RUNTIME_ENV, "HF_HUB_ENABLE_HF_TRANSFER": "1"})
    .add_local_dir("memory_snapshot_helper", f"{COMFY_DIR}/custom_nodes/memory_snapshot_helper", copy=True)
    .add_local_file("deploy.toml", "/root/deploy.toml", copy=True)
    .add_local_python_source(*LOCAL_MODULES, copy=True)
    .run_function(modal_runtime.download_models, volumes={MODELS_DIR: models_volume}, args=(CONFIG, MODELS_DIR))
)

if CONFIG.warm.warmup_workflow:
    gpu_image = gpu_image.add_local_file(CONFIG.warm.warmup_workflow, f"/root/{CONFIG.warm.warmup_workflow}")

# Per-function options in one table, so the offline test reads exactly what was registered.
SCHEDULES = {"sweep": modal.Cron("* * * * *"), "cleanup_expired": modal.Cron("0 3 * * *", timezone="UTC")}
TIMEOUTS_S = {"endpoint": 60, "remote": 60, "sweep": 55, "cleanup_expired": 3600, "verify_setup": 900,
              "worker": CONFIG.pool.timeout_s}


@functools.cache
def _services():
    return modal_runtime.services(jobs_dict, work_queue, wake=lambda pool: ComfyWorker().drain.spawn(pool))


# --- web endpoints: one per operation; ids travel as query parameters ---------------------------
def endpoint(method: str):
    def wrap(fn):
        web = modal.fastapi_endpoint(method=method, docs=True)(fn)
        return app.function(image=api_image, secrets=SECRETS, timeout=TIMEOUTS_S["endpoint"])(web)
    return wrap


@endpoint("POST")
async def submit(request: Request):
    import http_api

    return await http_api.handle_submit(_services(), request)


@endpoint("GET")
async def job(request: Request, id: str = ""):
    import http_api

    return await http_api.handle_get(_services(), request, id)


@endpoint("GET")
async def jobs(request: Request):
    import http_api

    return await http_api.handle_list(_services(), request)


@endpoint("POST")
async def cancel(request: Request, id: str = ""):
    import http_api

    return await http_api.handle_cancel(_services(), request, id)


@endpoint("GET")
async def events(request: Request, id: str = ""):
    import http_api

    # Modal ends web requests at 150 s: stream for 120 s, then the client reconnects with Last-Event-ID.
    return await http_api.handle_events(_services(), request, id, max_s=120.0)


@endpoint("GET")
async def metrics(request: Request):
    import http_api

    return await http_api.handle_metrics(_services(), request)


@endpoint("GET")
async def health():
    import http_api

    return await http_api.handle_health(_services())


# --- remote-callable functions for other Modal apps (modal.Function.from_name) -------------------
def remote():
    return app.function(image=api_image, secrets=SECRETS, timeout=TIMEOUTS_S["remote"])


@remote()
def submit_job(request: dict, user_id: str | None = None) -> dict:
    import api

    return api.remote_submit(_services(), request, user_id)


@remote()
def get_job(job_id: str, user_id: str | None = None) -> dict:
    import api

    return api.get_job(_services(), api.Caller("modal", user_id), job_id)


@remote()
def list_jobs(user_id: str | None = None, status: str | None = None, cursor: str | None = None,
                     limit: int = 20) -> dict:
    import api

    return api.list_jobs(_services(), api.Caller("modal", user_id), status=status, cursor=cursor, limit=limit)


@remote()
def cancel_job(job_id: str, user_id: str | None = None) -> dict:
    import api

    return api.cancel_job(_services(), api.Caller("modal", user_id), job_id)


# --- the GPU worker pool ---------------------------------------------------------------------------
@app.cls(image=gpu_image, gpu=CONFIG.gpus(), enable_memory_snapshot=True, secrets=SECRETS,
         volumes={MODELS_DIR: models_volume}, timeout=TIMEOUTS_S["worker"],
         min_containers=CONFIG.pool.min_containers, max_containers=CONFIG.pool.max_containers,
         scaledown_window=CONFIG.pool.scaledown_window_s)
class ComfyWorker:
    @modal.enter(snap=True)
    def launch_comfyui(self) -> None:
        """Snapshot phase: no GPU; memory_snapshot_helper keeps ComfyUI on the CPU."""
        from comfy_process import ComfyProcess

        self.comfy = ComfyProcess(COMFY_DIR, CONFIG.comfyui.port)
        self.comfy.start(ready_timeout_s=600)
        modal_runtime.preload_checkpoints(self.comfy, CONFIG.warm.preload_checkpoints)

    @modal.enter(snap=False)
    def attach_gpu(self) -> None:
        modal_runtime.attach_gpu(self.comfy)
        warmup = f"/root/{CONFIG.warm.warmup_workflow}" if CONFIG.warm.warmup_workflow else ""
        self.worker = modal_runtime.restored_worker(_services(), self.comfy, Path("/tmp"), warmup)

    @modal.method()
    def drain(self, pool: str = "default") -> int:
        self.worker.pool = pool
        return self.worker.drain(CONFIG.pool.drain_idle_s)

    @modal.exit()
    def stop_comfyui(self) -> None:
        self.comfy.stop()


# --- schedules and checks ---------------------------------------------------------------------------
@app.function(image=api_image, secrets=SECRETS, schedule=SCHEDULES["sweep"], timeout=TIMEOUTS_S["sweep"])
def sweep() -> dict:
    import sweeper
    import webhooks

    svc = _services()
    done = sweeper.sweep(svc.store, svc.settings)
    done.update({f"webhook_{k}": v for k, v in webhooks.dispatch(svc, owner="sweep").items()})
    if done.get("reenqueue") or done.get("requeue"):
        ComfyWorker().drain.spawn(svc.settings.default_pool)
    return dict(done)


@app.function(image=api_image, secrets=SECRETS, schedule=SCHEDULES["cleanup_expired"],
              timeout=TIMEOUTS_S["cleanup_expired"])
def cleanup_expired() -> dict:
    import cleanup

    svc = _services()
    return dict(cleanup.cleanup(svc.store, svc.objects, svc.settings))


@app.function(image=gpu_image, gpu=CONFIG.gpus(), volumes={MODELS_DIR: models_volume},
              timeout=TIMEOUTS_S["verify_setup"])
def verify_setup() -> dict:
    """`modal run app.py::verify_setup`: models and custom nodes present/missing, and ComfyUI starts."""
    report = modal_runtime.verify_setup(CONFIG, Path(COMFY_DIR), Path(MODELS_DIR), CONFIG.comfyui.port)
    print(report)
    return report
