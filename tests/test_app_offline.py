"""The Modal app, checked offline: it imports without credentials, and a test reads what it registered."""

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
warnings.simplefilter("ignore")
import modal
from modal._partial_function import _PartialFunctionFlags as F
import app
sync = modal._utils.async_utils.synchronizer
fns = {name: sync._translate_in(f) for name, f in app.app.registered_functions.items()}
report = {"functions": sorted(fns), "web": {}, "gpus": {}, "schedules": {}, "timeouts": app.TIMEOUTS_S}
for name, f in fns.items():
    hook = f._webhook_config
    if hook is not None:
        report["web"][name] = {"method": hook.method, "docs": hook.web_endpoint_docs}
    report["gpus"][name] = f._spec.gpus
for name, cron in app.SCHEDULES.items():
    report["schedules"][name] = [cron.proto_message.cron.cron_string, cron.proto_message.cron.timezone]
user_cls = sync._translate_in(app.ComfyWorker)._user_cls
report["worker_hooks"] = {k: int(sync._translate_in(v).flags) for k, v in vars(user_cls).items()
                          if not k.startswith("__")}
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
                "cancel_job", "ComfyWorker.*", "sweep", "cleanup_expired", "verify_setup"}
    assert expected <= set(report["functions"])


def test_web_endpoints_have_one_method_each_and_docs(report: dict):
    assert report["web"] == {"submit": {"method": "POST", "docs": True}, "job": {"method": "GET", "docs": True},
                             "jobs": {"method": "GET", "docs": True}, "cancel": {"method": "POST", "docs": True},
                             "health": {"method": "GET", "docs": True}, "metrics": {"method": "GET", "docs": True},
                             "events": {"method": "GET", "docs": True}}


def test_gpus_come_from_deploy_config_in_fallback_order(report: dict):
    assert report["gpus"]["ComfyWorker.*"] == ["L40S", "A100-40GB", "A10G"]
    assert report["gpus"]["submit"] is None and report["gpus"]["sweep"] is None


def test_gpu_config_overrides_the_gpu_list(tmp_path: Path):
    assert introspect(tmp_path, GPU_CONFIG="H100, A100-80GB")["gpus"]["ComfyWorker.*"] == ["H100", "A100-80GB"]


def test_schedules_sweep_every_minute_and_clean_up_at_three(report: dict):
    assert report["schedules"] == {"sweep": ["* * * * *", "UTC"], "cleanup_expired": ["0 3 * * *", "UTC"]}
    assert report["timeouts"]["sweep"] < 60  # a sweep never overlaps the next minute's


def test_worker_snapshots_comfyui_then_attaches_the_gpu(report: dict):
    hooks = report["worker_hooks"]
    assert hooks == {"launch_comfyui": 2, "attach_gpu": 4, "drain": 16, "stop_comfyui": 8}  # pre/post snap, exit


def test_app_module_imports_nothing_heavy(tmp_path: Path):
    code = "import sys, app; print(json.dumps([m for m in ('boto3', 'websocket', 'torch') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
