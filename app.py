"""Modal wiring only: the API image, one web endpoint per operation, remote-callable functions for other
Modal apps, the schedules, and the GPU worker pool from worker.py. `modal deploy app.py` deploys it all.

Every function hands over to plain code in the comfy_saas package; named Modal objects come from storage.py.
"""

from __future__ import annotations

from pathlib import Path

import modal
from fastapi import Request

import storage
import worker
from comfy_saas.config import names

HERE = Path(__file__).resolve().parent

app = modal.App(names.APP_NAME)
app.include(worker.worker_app)

api_image = (
    modal.Image.debian_slim(python_version=worker.CONFIG.comfyui.python)
    .pip_install_from_pyproject(str(HERE / "pyproject.toml"))
    .env(storage.RUNTIME_ENV)
    .add_local_python_source("comfy_saas", "storage", "worker")
    .add_local_dir(HERE / "memory_snapshot_helper", "/root/memory_snapshot_helper")
    .add_local_file(HERE / "deploy.toml", "/root/deploy.toml")
    .add_local_file(HERE / "pyproject.toml", "/root/pyproject.toml")
)

# Per-function options in one table, so the offline test reads exactly what was registered.
SCHEDULES = {"sweep": modal.Cron("* * * * *", timezone="UTC"),
             "cleanup_expired": modal.Cron("0 3 * * *", timezone="UTC")}
TIMEOUTS_S = {"endpoint": 60, "events": 150, "remote": 60, "sweep": 55, "cleanup_expired": 3600,
              "worker": worker.WORKER_TIMEOUT_S}
EVENTS_STREAM_S = 120.0  # an SSE stream ends before its function's timeout; the client reconnects


def _services():
    return storage.services(worker.wake)


# --- web endpoints: one per operation; ids travel as query parameters ---------------------------
def endpoint(method: str, timeout_s: int = TIMEOUTS_S["endpoint"]):
    def wrap(fn):
        web = modal.fastapi_endpoint(method=method, docs=True)(fn)
        return app.function(image=api_image, secrets=storage.SECRETS, timeout=timeout_s)(web)
    return wrap


@endpoint("POST")
async def submit(request: Request):
    from comfy_saas.web import http

    return await http.handle_submit(_services(), request)


@endpoint("GET")
async def job(request: Request, id: str = ""):
    from comfy_saas.web import http

    return await http.handle_get(_services(), request, id)


@endpoint("GET")
async def jobs(request: Request):
    from comfy_saas.web import http

    return await http.handle_list(_services(), request)


@endpoint("POST")
async def cancel(request: Request, id: str = ""):
    from comfy_saas.web import http

    return await http.handle_cancel(_services(), request, id)


@endpoint("GET", timeout_s=TIMEOUTS_S["events"])
async def events(request: Request, id: str = ""):
    from comfy_saas.web import http

    return await http.handle_events(_services(), request, id, max_s=EVENTS_STREAM_S)


@endpoint("GET")
async def metrics(request: Request):
    from comfy_saas.web import http

    return await http.handle_metrics(_services(), request)


@endpoint("GET")
async def models(request: Request):
    from comfy_saas.web import http

    return await http.handle_models(_services(), request)


@endpoint("DELETE")
async def delete_model(request: Request, sha256: str = ""):
    from comfy_saas.web import http

    return await http.handle_model_delete(_services(), request, sha256)


@endpoint("GET")
async def health():
    from comfy_saas.web import http

    return await http.handle_health(_services())


# --- workflow templates: names travel as query parameters -----------------------------------------
@endpoint("PUT")
async def put_workflow(request: Request, name: str = ""):
    from comfy_saas.web import http

    return await http.handle_template_put(_services(), request, name)


@endpoint("GET")
async def workflow(request: Request, name: str = ""):
    from comfy_saas.web import http

    return await http.handle_template_get(_services(), request, name)


@endpoint("GET")
async def workflows(request: Request):
    from comfy_saas.web import http

    return await http.handle_template_list(_services(), request)


@endpoint("DELETE")
async def delete_workflow(request: Request, name: str = ""):
    from comfy_saas.web import http

    return await http.handle_template_delete(_services(), request, name)


@endpoint("POST")
async def workflow_jobs(request: Request, name: str = ""):
    from comfy_saas.web import http

    return await http.handle_template_run(_services(), request, name)


# --- remote-callable functions for other Modal apps (modal.Function.from_name) -------------------
def remote():
    return app.function(image=api_image, secrets=storage.SECRETS, timeout=TIMEOUTS_S["remote"])


@remote()
def submit_job(request: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.submit_job(_services(), request, user_id)


@remote()
def get_job(job_id: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.get_job(_services(), job_id, user_id)


@remote()
def list_jobs(user_id: str | None = None, status: str | None = None, cursor: str | None = None,
              limit: int = 20) -> dict:
    from comfy_saas.web import remote as calls

    return calls.list_jobs(_services(), user_id, status=status, cursor=cursor, limit=limit)


@remote()
def cancel_job(job_id: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.cancel_job(_services(), job_id, user_id)


@remote()
def put_template(name: str, template: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.put_template(_services(), name, template, user_id)


@remote()
def get_template(name: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.get_template(_services(), name, user_id)


@remote()
def list_templates(user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.list_templates(_services(), user_id)


@remote()
def delete_template(name: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.delete_template(_services(), name, user_id)


@remote()
def submit_template_job(name: str, request: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.submit_template_job(_services(), name, request, user_id)


# --- schedules ------------------------------------------------------------------------------------
@app.function(image=api_image, secrets=storage.SECRETS, schedule=SCHEDULES["sweep"], timeout=TIMEOUTS_S["sweep"])
def sweep() -> dict:
    from comfy_saas import modal_runtime

    return modal_runtime.sweep(_services(), worker.wake)


@app.function(image=api_image, secrets=storage.SECRETS, schedule=SCHEDULES["cleanup_expired"],
              timeout=TIMEOUTS_S["cleanup_expired"])
def cleanup_expired() -> dict:
    from comfy_saas.jobs import cleanup

    return dict(cleanup.cleanup(_services()))
