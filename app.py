"""Modal wiring only: the API image, one web endpoint per operation (from the route table the local server
uses too), one ASGI function for the standard surfaces, remote-callable functions for other Modal apps, the
schedules, and the GPU worker pools from worker.py. `modal deploy app.py` deploys it all (the GPU check is
verify.py, an app of its own).

Every function hands over to plain code in the comfy_saas package; named Modal objects come from storage.py,
sizes and timeouts from deploy.toml.
"""

from __future__ import annotations

from pathlib import Path

import modal

import storage
import worker
from comfy_saas.config import names
from comfy_saas.config.deploy import image_requirements
from comfy_saas.modal_runtime import write_lines_step
from comfy_saas.web import routes

HERE = Path(__file__).resolve().parent
API = worker.CONFIG.api
SURFACES = worker.CONFIG.surfaces

app = modal.App(names.APP_NAME)
app.include(worker.worker_app)

# `comfy-saas` on the PATH, for `modal shell app.py::sweep` (the package itself is mounted under /root).
CLI = "/usr/local/bin/comfy-saas"
CLI_SHIM = "#!/usr/bin/env python3\nimport sys\nsys.path.insert(0, '/root')\nfrom comfy_saas.cli import main\n" \
           "sys.exit(main())\n"
# The API image serves the ComfyUI editor too (the surfaces function), so it carries the `editor` extra.
API_REQUIREMENTS = image_requirements(HERE / "pyproject.toml", extras=("editor",))
CLI_STEP = f"{write_lines_step(CLI_SHIM.splitlines(), CLI)} && chmod +x {CLI}"
api_image = (
    modal.Image.debian_slim(python_version=worker.CONFIG.comfyui.python)
    .pip_install(*API_REQUIREMENTS)
    .run_commands(CLI_STEP)
    # The project last, mounted when a container starts: a code edit rebuilds no layer.
    .add_local_python_source("comfy_saas", "storage", "worker", "model_download")
    .add_local_file(HERE / "deploy.toml", "/root/deploy.toml")
    .add_local_file(HERE / "pyproject.toml", "/root/pyproject.toml")
)

# Per-function options in one table, so the offline test reads exactly what was registered.
SCHEDULES = {"sweep": modal.Cron("* * * * *", timezone="UTC"),
             "cleanup_expired": modal.Cron("0 3 * * *", timezone="UTC")}
TIMEOUTS_S = {"endpoint": API.timeout_s, "events": API.events_timeout_s, "remote": API.timeout_s, "sweep": 55,
              "cleanup_expired": 3600, "surfaces": SURFACES.timeout_s}
EVENTS_STREAM_S = API.events_stream_s  # an SSE stream ends before its function's timeout; the client resumes
WARM_ENDPOINTS = {"submit", "job"}  # kept at api.min_containers: the calls a client makes first and most
# The functions that take a job body (up to api.max_body_bytes, counted BODY_COPIES times at its peak): fewer
# inputs per container and more memory each (deploy.toml [api] says the sizing).
BODY_FUNCTIONS = {"submit", "workflow_jobs", "put_workflow", "submit_job", "submit_template_job", "put_template"}
COMMON = {"image": api_image, "env": worker.RUNTIME_ENV, "secrets": storage.SECRETS}


def _services():
    storage.wakeups(worker.spawn)  # every accepted submission wakes its pool (coalesced; jobs/wakeups.py)
    return storage.services()


def _sized(name: str) -> dict:
    """The memory of function `name` (memory= of app.function)."""
    return {"memory": API.body_memory_mib if name in BODY_FUNCTIONS else API.memory_mib}


def _concurrent(fn, name: str):
    # The handlers wait on the Dict, the Queue and R2, not on the CPU: one container serves many at once (fewer
    # when each may hold a job body).
    if name in BODY_FUNCTIONS:
        return modal.concurrent(max_inputs=API.body_max_inputs, target_inputs=API.body_target_inputs)(fn)
    return modal.concurrent(max_inputs=API.max_inputs, target_inputs=API.target_inputs)(fn)


# --- web endpoints: one per operation of web/routes.py; ids travel as ?id= ---------------------------------
ENDPOINTS: dict[str, modal.Function] = {}
for _route in routes.ROUTES:
    _handler = routes.endpoint(_route, _services, "modal", events_stream_s=EVENTS_STREAM_S)
    _handler.__module__ = __name__  # a module global of this file: the container finds it by name
    _web = _concurrent(modal.fastapi_endpoint(method=_route.method, docs=True)(_handler), _route.name)
    globals()[_route.name] = ENDPOINTS[_route.name] = app.function(
        **COMMON, **_sized(_route.name), timeout=TIMEOUTS_S["events" if _route.name == "events" else "endpoint"],
        min_containers=API.min_containers if _route.name in WARM_ENDPOINTS else 0)(_web)


# --- the standard surfaces: Comfy API v2 and ComfyUI's native API (path parameters and WebSockets on one base URL)
@app.function(**COMMON, memory=SURFACES.memory_mib, timeout=TIMEOUTS_S["surfaces"],
              min_containers=SURFACES.min_containers)
@modal.concurrent(max_inputs=SURFACES.max_inputs, target_inputs=SURFACES.target_inputs)
@modal.asgi_app()
def surfaces():
    from comfy_saas.web.surfaces import surfaces_app

    return surfaces_app(_services)


# --- remote-callable functions for other Modal apps (modal.Function.from_name) -------------------------------
def remote(fn):
    return app.function(**COMMON, **_sized(fn.__name__), timeout=TIMEOUTS_S["remote"])(_concurrent(fn, fn.__name__))


@remote
def submit_job(request: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.submit_job(_services(), request, user_id)


@remote
def get_job(job_id: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.get_job(_services(), job_id, user_id)


@remote
def list_jobs(user_id: str | None = None, status: str | None = None, cursor: str | None = None,
              limit: int = 20) -> dict:
    from comfy_saas.web import remote as calls

    return calls.list_jobs(_services(), user_id, status=status, cursor=cursor, limit=limit)


@remote
def cancel_job(job_id: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.cancel_job(_services(), job_id, user_id)


@remote
def put_template(name: str, template: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.put_template(_services(), name, template, user_id)


@remote
def get_template(name: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.get_template(_services(), name, user_id)


@remote
def list_templates(user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.list_templates(_services(), user_id)


@remote
def delete_template(name: str, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.delete_template(_services(), name, user_id)


@remote
def submit_template_job(name: str, request: dict, user_id: str | None = None) -> dict:
    from comfy_saas.web import remote as calls

    return calls.submit_template_job(_services(), name, request, user_id)


# --- schedules ------------------------------------------------------------------------------------
@app.function(**COMMON, **_sized("sweep"), schedule=SCHEDULES["sweep"], timeout=TIMEOUTS_S["sweep"])
def sweep() -> dict:
    """Lost workers, timeouts, lost wake-ups, webhook retries; then every pool is woken (and its floor kept)."""
    from comfy_saas import modal_runtime

    return modal_runtime.sweep(_services(), storage.wakeups(worker.spawn).wake_all)


@app.function(**COMMON, **_sized("cleanup_expired"), schedule=SCHEDULES["cleanup_expired"],
              timeout=TIMEOUTS_S["cleanup_expired"])
def cleanup_expired() -> dict:
    from comfy_saas.jobs import cleanup

    return dict(cleanup.cleanup(_services()))
