"""The Modal app, checked offline: it imports without credentials, and a test reads what it registered
through each function's public `info()` (modal 1.6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in a clean interpreter with no Modal credentials; prints what the app registered.
INTROSPECT = r"""
import json, warnings
warnings.simplefilter("error", DeprecationWarning)  # nothing deprecated on the way
import modal
import app, worker
from modal._partial_function import _PartialFunctionFlags
sync = modal._utils.async_utils.synchronizer
report = {"functions": {}, "timeouts": app.TIMEOUTS_S, "schedules": {}}
for module in (app, worker):
    for name, obj in vars(module).items():
        if isinstance(obj, modal.Function):
            info = obj.info()
            report["functions"][name] = {
                "gpus": [g for g, _ in info.gpus], "timeout": info.timeout, "schedule": info.schedule,
                "web": info.web_info.method if info.web_info else None,
                "concurrency": info.concurrency_info.max_inputs if info.concurrency_info else None}
        elif isinstance(obj, modal.Cls):
            info = obj().drain.info()
            user_cls = sync._translate_in(obj)._user_cls
            hooks = {k: int(sync._translate_in(v).flags) for k, v in vars(user_cls).items() if not k.startswith("__")}
            report["functions"][name] = {"gpus": [g for g, _ in info.gpus], "timeout": info.timeout,
                                         "startup_timeout": info.startup_timeout, "hooks": hooks}
for name, cron in app.SCHEDULES.items():
    report["schedules"][name] = [cron.proto_message.cron.cron_string, cron.proto_message.cron.timezone]
print(json.dumps(report))
"""


def introspect(tmp_path: Path, **env: str) -> dict:
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}  # no MODAL_TOKEN_*, no ~/.modal.toml
    out = subprocess.run([sys.executable, "-c", INTROSPECT], cwd=ROOT, env=clean_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return introspect(tmp_path_factory.mktemp("home"))


def test_every_operation_is_registered(report: dict):
    expected = {"submit", "job", "jobs", "cancel", "health", "metrics", "events", "submit_job", "get_job", "list_jobs",
                "cancel_job", "ComfyWorker", "sweep", "cleanup_expired", "verify_setup", "put_workflow", "workflow",
                "workflows", "delete_workflow", "workflow_jobs", "put_template", "get_template", "list_templates",
                "delete_template", "submit_template_job"}
    assert expected <= set(report["functions"])


def test_web_endpoints_have_one_method_each(report: dict):
    web = {name: f["web"] for name, f in report["functions"].items() if f.get("web")}
    assert web == {"submit": "POST", "job": "GET", "jobs": "GET", "cancel": "POST", "health": "GET",
                   "metrics": "GET", "events": "GET", "put_workflow": "PUT", "workflow": "GET", "workflows": "GET",
                   "delete_workflow": "DELETE", "workflow_jobs": "POST", "models": "GET", "delete_model": "DELETE"}


def test_wait_mode_is_capped_below_the_endpoint_timeout(report: dict):
    from comfy_saas.config import Settings

    cap = Settings().max_wait_s
    assert all(report["functions"][name]["timeout"] > cap for name in ("submit", "job", "workflow_jobs"))


def test_gpus_come_from_deploy_config_in_fallback_order(report: dict):
    assert report["functions"]["ComfyWorker"]["gpus"] == ["L40S", "A100-40GB", "A10G"]
    assert report["functions"]["submit"]["gpus"] == [] and report["functions"]["sweep"]["gpus"] == []


def test_gpu_config_overrides_the_gpu_list(tmp_path: Path):
    gpus = introspect(tmp_path, COMFY_GPU_CONFIG="H100, A100-80GB")["functions"]["ComfyWorker"]["gpus"]
    assert gpus == ["H100", "A100-80GB"]


def test_schedules_sweep_every_minute_and_clean_up_at_three(report: dict):
    assert report["schedules"] == {"sweep": ["* * * * *", "UTC"], "cleanup_expired": ["0 3 * * *", "UTC"]}
    assert report["functions"]["sweep"]["timeout"] < 60  # a sweep never overlaps the next minute's


def test_events_stream_ends_before_its_function_times_out(report: dict):
    import app

    assert report["functions"]["events"]["timeout"] > app.EVENTS_STREAM_S


def test_worker_snapshots_comfyui_then_attaches_the_gpu(report: dict):
    hooks = report["functions"]["ComfyWorker"]["hooks"]
    assert hooks == {"launch_comfyui": 2, "attach_gpu": 4, "drain": 16, "stop_comfyui": 8}  # pre/post snap, exit


def test_app_module_imports_nothing_heavy(tmp_path: Path):
    code = "import sys, app; print(json.dumps([m for m in ('boto3', 'websocket', 'torch') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
