"""The Modal app, checked offline: it imports without credentials, and a test reads what it registered through
each function's public `info()` (modal 1.6), and the few things 1.6 keeps private (autoscaler bounds, a
Secret's required keys, image layers and mounts) through tests/modal_private.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_saas.config.settings import describe

ROOT = Path(__file__).resolve().parent.parent

# Runs in a clean interpreter with no Modal credentials; prints what the app registered.
INTROSPECT = r"""
import json, sys, warnings
warnings.simplefilter("error")  # nothing deprecated on the way (modal's DeprecationError is a UserWarning)
sys.path.insert(0, sys.argv[1])
import modal
import modal_private as private
import app, storage, verify, worker
sync = modal._utils.async_utils.synchronizer
report = {"functions": {}, "classes": {}, "timeouts": app.TIMEOUTS_S, "schedules": {}, "images": {}, "verify": {}}
for module in (app, worker):
    for name, obj in vars(module).items():
        if isinstance(obj, modal.Function):
            info = obj.info()
            report["functions"][name] = {
                "gpus": [g for g, _ in info.gpus], "timeout": info.timeout, "schedule": info.schedule,
                "memory": info.memory_mib, "asgi": private.is_asgi(obj),
                "web": info.web_info.method if info.web_info else None,
                "concurrency": [info.concurrency_info.max_inputs, info.concurrency_info.target_inputs]
                               if info.concurrency_info else None,
                "secrets": info.secrets, **private.function_options(obj)}
        elif isinstance(obj, modal.Cls):
            info = obj().drain.info()
            user_cls = sync._translate_in(obj)._user_cls
            hooks = {k: int(sync._translate_in(v).flags) for c in user_cls.__mro__ for k, v in vars(c).items()
                     if hasattr(v, "flags") or type(v).__name__ == "PartialFunction"}
            report["classes"][name] = {"gpus": [g for g, _ in info.gpus], "timeout": info.timeout,
                                       "startup_timeout": info.startup_timeout, "hooks": hooks,
                                       "secrets": info.secrets, **private.function_options(obj)}
for name, cron in app.SCHEDULES.items():
    report["schedules"][name] = [cron.proto_message.cron.cron_string, cron.proto_message.cron.timezone]
report["secrets"] = {s.name: private.required_keys(s) for s in storage.SECRETS}
for name, image in {"api": app.api_image, **worker.IMAGES}.items():
    report["images"][name] = {"files": sorted(private.mounted_files(image)), "steps": private.build_steps(image)}
report["deployed"] = private.app_members(app.app)
for name, fn in verify.VERIFY.items():
    report["verify"][name] = {"gpus": [g for g, _ in fn.info().gpus]}
report["verify_app"] = private.app_members(verify.app)
report["pools"] = [p.model_dump() for p in worker.CONFIG.pools]
report["surfaces"] = worker.CONFIG.surfaces.model_dump()
report["body_functions"] = sorted(app.BODY_FUNCTIONS)
report["api"] = worker.CONFIG.api.model_dump()
report["events_stream_s"] = app.EVENTS_STREAM_S
print(json.dumps(report))
"""

TWO_POOLS = """
[[pools]]
name = "default"
gpus = ["L40S", "A10G"]
floor = 1
ceiling = 3
timeout_s = 3600
startup_timeout_s = 600

[[pools]]
name = "video"
gpus = ["H100", "A100-80GB"]
floor = 0
ceiling = 2
timeout_s = 14400
gpu_snapshot = true
custom_nodes = [{ repo = "https://github.com/example/video-nodes.git", ref = "0123456789abcdef" }]
models = [{ repo = "example/video", file = "video.safetensors", subdir = "diffusion_models" }]
"""


def introspect(home: Path, cwd: Path = ROOT, **env: str) -> dict:
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}  # no MODAL_TOKEN_*, no ~/.modal.toml
    out = subprocess.run([sys.executable, "-c", INTROSPECT, str(ROOT / "tests")], cwd=cwd, env=clean_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def two_pool_checkout(tmp: Path) -> Path:
    """The deployment files with a deploy.toml declaring two pools (the package comes from the venv)."""
    for name in ("app.py", "worker.py", "verify.py", "storage.py", "model_download.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "memory_snapshot_helper", tmp / "memory_snapshot_helper")
    text = (ROOT / "deploy.toml").read_text()
    head, _, rest = text.partition("[[pools]]")
    (tmp / "deploy.toml").write_text(head + TWO_POOLS + "\n[warm]" + rest.partition("[warm]")[2])
    return tmp


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return introspect(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def two_pools(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return introspect(tmp_path_factory.mktemp("home"), two_pool_checkout(tmp_path_factory.mktemp("checkout")))


def test_every_operation_is_registered(report: dict):
    expected = {"submit", "job", "jobs", "cancel", "health", "metrics", "events", "submit_job", "get_job", "list_jobs",
                "cancel_job", "sweep", "cleanup_expired", "put_workflow", "workflow", "surfaces",
                "workflows", "delete_workflow", "workflow_jobs", "put_template", "get_template", "list_templates",
                "delete_template", "submit_template_job", "models", "delete_model"}
    assert set(report["functions"]) == expected
    assert set(report["classes"]) == {"ComfyWorker_default"}
    assert report["deployed"] == sorted([*expected, "ComfyWorker_default"])  # what `modal deploy app.py` ships


def test_the_gpu_check_is_an_app_of_its_own_never_deployed(report: dict):
    assert report["verify_app"] == ["verify_default"]
    assert not [name for name in report["deployed"] if name.startswith("verify")]


def test_web_endpoints_come_from_the_route_table_one_method_each(report: dict):
    from comfy_saas.web.routes import ROUTES

    web = {name: f["web"] for name, f in report["functions"].items() if f.get("web")}
    assert web == {r.name: r.method for r in ROUTES}
    assert web == {"submit": "POST", "job": "GET", "jobs": "GET", "cancel": "POST", "health": "GET",
                   "metrics": "GET", "events": "GET", "put_workflow": "PUT", "workflow": "GET", "workflows": "GET",
                   "delete_workflow": "DELETE", "workflow_jobs": "POST", "models": "GET", "delete_model": "DELETE"}


def test_wait_mode_is_capped_below_the_endpoint_timeout(report: dict):
    from comfy_saas.config import Settings

    cap = Settings().max_wait_s
    assert all(report["functions"][name]["timeout"] > cap for name in ("submit", "job", "workflow_jobs"))


def test_web_and_remote_functions_serve_many_requests_per_container(report: dict):
    api = report["api"]
    for name in ("job", "jobs", "cancel", "health", "metrics", "events", "get_job", "list_jobs", "cancel_job",
                 "workflow", "workflows", "delete_workflow", "models", "delete_model", "get_template",
                 "list_templates", "delete_template"):
        assert report["functions"][name]["concurrency"] == [api["max_inputs"], api["target_inputs"]], name
    for name in report["body_functions"]:  # each may hold a job body: fewer at once
        assert report["functions"][name]["concurrency"] == [api["body_max_inputs"], api["body_target_inputs"]], name
    assert report["functions"]["sweep"]["concurrency"] is None  # one sweep at a time


def test_every_api_container_has_the_memory_its_inputs_need(report: dict):
    """Memory from the registered functions: the baseline plus, per input in flight, a small request's peak, or
    BODY_COPIES of the largest body where a job body may arrive (deploy.toml [api] says the sizing)."""
    from comfy_saas.config.deploy import BASELINE_MIB, BODY_COPIES, SMALL_REQUEST_MIB

    assert report["body_functions"] == ["put_template", "put_workflow", "submit", "submit_job",
                                        "submit_template_job", "workflow_jobs"]
    body_mib = report["api"]["max_body_bytes"] / 2**20
    for name, fn in report["functions"].items():
        if name in report["classes"]:
            continue
        inputs = fn["concurrency"][0] if fn["concurrency"] else 1
        per_input = BODY_COPIES * body_mib if name in report["body_functions"] + ["surfaces"] else SMALL_REQUEST_MIB
        assert fn["memory"] is not None and fn["memory"] >= BASELINE_MIB + inputs * per_input, (name, fn["memory"])


def test_the_body_limit_the_memory_is_sized_for_is_the_one_enforced(report: dict):
    from comfy_saas.config import Settings

    env = report["functions"]["submit"]["secrets"][-1]
    assert "COMFY_LIMIT_MAX_BODY_BYTES" in env
    assert report["api"]["max_body_bytes"] == Settings().limits.max_body_bytes  # the default agrees too


def test_a_deploy_toml_undersizing_memory_is_refused():
    from comfy_saas.config.deploy import Api

    with pytest.raises(ValueError, match=r"api.body_memory_mib = 1024 is below the 1856 MiB"):
        Api(body_memory_mib=1024)


def test_the_standard_surfaces_are_one_asgi_function_with_their_own_sizes(report: dict):
    fn, surfaces = report["functions"]["surfaces"], report["surfaces"]
    assert fn["asgi"] and fn["web"] is None and not any(f["asgi"] for n, f in report["functions"].items()
                                                        if n != "surfaces")
    assert fn["concurrency"] == [surfaces["max_inputs"], surfaces["target_inputs"]]
    assert (fn["memory"], fn["timeout"], fn["min_containers"]) == (
        surfaces["memory_mib"], surfaces["timeout_s"], surfaces["min_containers"])
    assert fn["timeout"] > report["events_stream_s"]  # an SSE stream ends before the input does


def test_submit_and_get_keep_the_configured_warm_floor(two_pools: dict, report: dict):
    floors = {n: f["min_containers"] for n, f in report["functions"].items() if f.get("web")}
    assert floors == {n: (report["api"]["min_containers"] if n in {"submit", "job"} else 0) for n in floors}


def test_each_pool_is_its_own_worker_with_its_gpus_floor_and_ceiling(two_pools: dict):
    assert set(two_pools["classes"]) == {"ComfyWorker_default", "ComfyWorker_video"}
    for pool in two_pools["pools"]:
        worker = two_pools["classes"][f"ComfyWorker_{pool['name']}"]
        assert worker["gpus"] == pool["gpus"]
        assert (worker["min_containers"], worker["max_containers"]) == (pool["floor"], pool["ceiling"])
        assert (worker["timeout"], worker["startup_timeout"]) == (pool["timeout_s"], pool["startup_timeout_s"])
        assert worker["memory_snapshot"] is True
        assert worker["experimental"] == ({"enable_gpu_snapshot": "True"} if pool["gpu_snapshot"] else {})
        assert two_pools["verify"][pool["name"]]["gpus"] == pool["gpus"]


def test_the_running_service_is_told_the_pools(two_pools: dict):
    secrets = two_pools["functions"]["submit"]["secrets"]
    assert any("COMFY_POOLS" in s and "COMFY_DEFAULT_POOL" in s for s in secrets)
    # MODAL_MAX_THROTTLE_WAIT would cap every RPC (a throttled job write would fail its attempt): spawns are
    # bounded on their own (worker.spawn)
    assert not any("MODAL_MAX_THROTTLE_WAIT" in s for s in secrets)
    assert secrets == two_pools["classes"]["ComfyWorker_video"]["secrets"]


def test_gpu_lists_are_overridden_per_pool_from_the_environment(tmp_path: Path):
    (tmp_path / "checkout").mkdir()
    checkout = two_pool_checkout(tmp_path / "checkout")
    got = introspect(tmp_path, checkout, COMFY_POOL_GPUS="video=B200", COMFY_GPU_CONFIG="H100, A100-80GB")
    assert got["classes"]["ComfyWorker_video"]["gpus"] == ["B200"]
    assert got["classes"]["ComfyWorker_default"]["gpus"] == ["H100", "A100-80GB"]


def test_the_default_deploy_toml_gpus_in_fallback_order(report: dict):
    assert report["classes"]["ComfyWorker_default"]["gpus"] == ["L40S", "A100-40GB", "A10G"]
    assert report["functions"]["submit"]["gpus"] == [] and report["functions"]["sweep"]["gpus"] == []


def test_schedules_sweep_every_minute_and_clean_up_at_three(report: dict):
    assert report["schedules"] == {"sweep": ["* * * * *", "UTC"], "cleanup_expired": ["0 3 * * *", "UTC"]}
    assert report["functions"]["sweep"]["timeout"] < 60  # a sweep never overlaps the next minute's


def test_events_stream_ends_before_its_function_times_out(report: dict):
    assert report["functions"]["events"]["timeout"] > report["events_stream_s"]


def test_secrets_name_the_keys_they_must_hold(report: dict):
    assert report["secrets"] == {
        "comfy-saas-api": ["COMFY_API_KEYS"],
        "comfy-saas-r2": ["COMFY_R2_BUCKET", "COMFY_R2_ENDPOINT_URL", "COMFY_R2_ACCESS_KEY_ID",
                          "COMFY_R2_SECRET_ACCESS_KEY"]}
    names = {variable for variable, _, _ in describe()}
    assert {k for keys in report["secrets"].values() for k in keys} <= names  # every required key is a setting


def test_the_api_image_carries_the_cli_and_the_operator_commands(report: dict):
    files = set(report["images"]["api"]["files"])
    assert {"/root/comfy_saas/cli.py", "/root/comfy_saas/jobs/ops.py", "/root/comfy_saas/modal_runtime.py",
            "/root/storage.py", "/root/worker.py", "/root/deploy.toml"} <= files


def test_project_files_are_mounted_after_every_build_step(report: dict, two_pools: dict):
    for images in (report["images"], two_pools["images"]):
        for name, image in images.items():
            assert all(not s["after_mount"] and not s["sources"] for s in image["steps"]), name


def test_models_download_without_the_project_before_it_is_added(two_pools: dict):
    for pool in ("default", "video"):
        image = two_pools["images"][pool]
        downloads = [s for s in image["steps"] if s["runs"] == ["model_download.download"]]
        assert len(downloads) == 1 and downloads[0]["sources"] == []
        assert "/root/comfy_saas/cli.py" in image["files"]


def test_worker_snapshots_comfyui_then_attaches_the_gpu(report: dict):
    hooks = report["classes"]["ComfyWorker_default"]["hooks"]
    assert hooks == {"launch_comfyui": 2, "attach_gpu": 4, "drain": 16, "stop_comfyui": 8}  # pre/post snap, exit


def test_app_module_imports_nothing_heavy(tmp_path: Path):
    code = "import sys, app; print(json.dumps([m for m in ('boto3', 'websocket', 'torch') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_the_cli_shim_runs_the_operator_commands(tmp_path: Path):
    import app

    shim = tmp_path / "comfy-saas"
    step = app.CLI_STEP.replace(app.CLI, str(shim))
    subprocess.run(["sh", "-c", step], check=True, timeout=10)  # the image's build step, as one shell line
    assert shim.read_text() == app.CLI_SHIM and shim.stat().st_mode & 0o111
    shim.write_text(app.CLI_SHIM.replace("'/root'", repr(str(ROOT))))  # the image mounts the package at /root
    out = subprocess.run([sys.executable, str(shim), "ops", "--data-dir", str(tmp_path / "data"), "queue"],
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COMFY_POOLS": "default,video"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"default": 0, "video": 0, "(all partitions)": 0}


SERVICES_ONCE = """
import storage
spawn = lambda pool, slot: None
wakeups = storage.wakeups(spawn, "/models")  # what a GPU container builds first, as attach_gpu does
svc = storage.services("/models")
assert wakeups is storage.wakeups(spawn, "/models") and svc.wake == wakeups.wake
print(type(svc.model_files).__name__, svc.model_files.mounted)
try:
    storage.services()
except RuntimeError as exc:
    print("refused", exc)
"""


def test_a_gpu_container_builds_its_services_once_and_with_the_models_mount(tmp_path: Path):
    """The wake-up component is built first in a GPU container; its services must still read the mounted
    models Volume, and a later call naming another mount is refused rather than handed the wrong services."""
    out = subprocess.run([sys.executable, "-c", SERVICES_ONCE], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=120)
    assert out.returncode == 0, out.stderr
    mounted, refused = out.stdout.splitlines()
    assert mounted == "VolumeModelFiles True" and refused.startswith("refused services were built for")
