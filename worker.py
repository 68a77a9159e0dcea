"""The GPU worker pools: one memory-snapshotted Modal class per `[[pools]]` entry of deploy.toml, named
ComfyWorker_<pool>, each with its own GPU fallback list, floor (min_containers) and ceiling (max_containers),
timeouts and image, and each draining only its own queue partition.

ComfyUI starts during the snapshot phase on the CPU (kept CUDA-free by memory_snapshot_helper/); after a
restore `POST /cuda/set_device` moves it to the GPU before any job, and the worker id is made then. app.py
includes this module's App; a container imports this module on its own and finds its class by name, so each
pool class is a module global whose name is its class name.
"""

from __future__ import annotations

import time
from pathlib import Path

import modal

import model_download
import storage
from comfy_saas.config import Settings
from comfy_saas.config.deploy import CustomNode, Pool, image_requirements, load
from comfy_saas.modal_runtime import extra_model_paths, write_lines_step
from comfy_saas.runner.drains import DrainPlan

HERE = Path(__file__).resolve().parent
CONFIG = load(HERE / "deploy.toml")
DEPLOY_SETTINGS = Settings.from_env()  # at deploy time: COMFY_GPU_CONFIG / COMFY_POOL_GPUS override GPU lists
COMFY_DIR = "/root/comfy/ComfyUI"
MODELS_DIR = "/models"
# Every deployed container's environment (passed as function env, so changing it rebuilds no image layer):
# the pools from deploy.toml, the body limit the API's memory is sized for, and R2's checksum rules for any
# boto3 client. No MODAL_MAX_THROTTLE_WAIT: it would cap every RPC of the container (a throttled job write
# would then fail its attempt); only a spawn is bounded, by its own timeout (spawn below).
RUNTIME_ENV = {**storage.RUNTIME_ENV, **CONFIG.pools_env(),
               "COMFY_LIMIT_MAX_BODY_BYTES": str(CONFIG.api.max_body_bytes),
               "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}

worker_app = modal.App()  # unnamed: deployed only as part of app.py

pin = CONFIG.comfyui
TORCH = [f"torch=={pin.torch}", f"torchvision=={pin.torchvision}", f"torchaudio=={pin.torchaudio}"]
# Every pip step of the GPU image installs under these: no later step (ComfyUI's requirements, a custom node's)
# may move a pin (`make check-image` resolves each step against them).
PINS = pin.constraint_lines()
CONSTRAINTS = "/root/constraints.txt"
# The project's dependencies but modal, which Modal mounts into every container itself.
REQUIREMENTS = image_requirements(HERE / "pyproject.toml")


def _node_commands(nodes: list[CustomNode]) -> list[str]:
    return [f"git clone {n.repo} {COMFY_DIR}/custom_nodes/{n.name} && cd {COMFY_DIR}/custom_nodes/{n.name} && "
            f"git checkout {n.ref} && (test ! -f requirements.txt || pip install -r requirements.txt -c {CONSTRAINTS})"
            for n in nodes]


# Slow, rarely changing layers first; the model download before any project file, which is mounted last
# (copy=False) so a code edit rebuilds nothing.
base_image = (
    modal.Image.debian_slim(python_version=pin.python)
    .apt_install("git", "ffmpeg", "libgl1", "libglib2.0-0")
    .run_commands(write_lines_step(PINS, CONSTRAINTS))
    .pip_install(*TORCH, index_url=pin.torch_index_url, extra_options=f"-c {CONSTRAINTS}")
    .pip_install(*REQUIREMENTS, f"huggingface_hub[hf_xet]=={pin.huggingface_hub}", extra_options=f"-c {CONSTRAINTS}")
    .run_commands(
        f"git clone {pin.repo} {COMFY_DIR}",
        f"cd {COMFY_DIR} && git checkout {pin.commit}",
        f"pip install -r {COMFY_DIR}/requirements.txt -c {CONSTRAINTS}",
        *_node_commands(CONFIG.custom_nodes),
        f"printf '{extra_model_paths(MODELS_DIR)}' > {COMFY_DIR}/extra_model_paths.yaml",
    )
)


def pool_image(pool: Pool) -> modal.Image:
    """The base image plus the pool's own custom nodes, its models in the Volume, then the project (mounted)."""
    image = base_image.run_commands(*_node_commands(pool.custom_nodes)) if pool.custom_nodes else base_image
    models = [m.model_dump() for m in CONFIG.models_for(pool.name)]
    image = (image.run_function(model_download.download, args=(models, MODELS_DIR),
                                env={"HF_XET_HIGH_PERFORMANCE": "1"}, volumes={MODELS_DIR: storage.models_volume})
             .add_local_dir(HERE / "memory_snapshot_helper", f"{COMFY_DIR}/custom_nodes/memory_snapshot_helper")
             .add_local_python_source("comfy_saas", "storage", "worker", "model_download")
             .add_local_file(HERE / "deploy.toml", "/root/deploy.toml"))
    if CONFIG.warm.warmup_workflow:
        image = image.add_local_file(HERE / CONFIG.warm.warmup_workflow, f"/root/{CONFIG.warm.warmup_workflow}")
    return image


def spawn(pool: str, slot: int) -> None:
    """Start one drain input of a pool's class (jobs/wakeups.py decides when, and which slot it holds). A spawn
    Modal keeps throttling is cancelled after api.spawn_timeout_s (TimeoutError): the wake-up backs off, and
    the sweeper comes back within a minute."""
    from comfy_saas.modal_runtime import bounded

    bounded(lambda: POOL_CLASSES[pool]().drain.spawn.aio(slot), CONFIG.api.spawn_timeout_s)


class PoolWorker:
    """What every pool's class does; the subclass built per pool sets `pool`."""

    pool: str = ""

    @modal.enter(snap=True)
    def launch_comfyui(self) -> None:
        """Snapshot phase: no GPU (unless gpu_snapshot); memory_snapshot_helper keeps ComfyUI on the CPU."""
        from comfy_saas import modal_runtime
        from comfy_saas.runner.comfy_process import ComfyProcess

        pool = CONFIG.pool(self.pool)
        # ComfyUI's output (tracebacks, CUDA OOMs, custom node import errors) into the container's log, prefixed
        self.comfy = ComfyProcess(COMFY_DIR, CONFIG.comfyui.port, modal_runtime.job_model_args(),
                                  echo=modal_runtime.COMFY_LOG_PREFIX)
        self.comfy.start(ready_timeout_s=pool.startup_timeout_s)
        modal_runtime.warm_checkpoints(self.comfy, CONFIG.warm.preload_checkpoints, load=pool.gpu_snapshot)

    @modal.enter(snap=False)
    def attach_gpu(self) -> None:
        from comfy_saas import modal_runtime

        modal_runtime.attach_gpu(self.comfy)
        if not CONFIG.pool(self.pool).gpu_snapshot:
            modal_runtime.preload_checkpoints(self.comfy, CONFIG.warm.preload_checkpoints)
        warmup = f"/root/{CONFIG.warm.warmup_workflow}" if CONFIG.warm.warmup_workflow else ""
        self.wakeups = storage.wakeups(spawn, MODELS_DIR)
        self.worker = modal_runtime.restored_worker(storage.services(MODELS_DIR), self.comfy, Path("/tmp"), warmup,
                                                    model_shadows=[MODELS_DIR, f"{COMFY_DIR}/models"], pool=self.pool)

    @modal.method()
    def drain(self, slot: int = 0) -> int:
        """One drain of this pool's queue, holding wake-up slot `slot`; how many wake-ups it handled."""
        started = time.monotonic()  # this input's timeout runs from here: its deadline derives from it
        from comfy_saas.runner.drains import run_drain

        return run_drain(self.worker, self.wakeups, DrainPlan.for_pool(CONFIG.pool(self.pool)), slot, started)

    @modal.exit()
    def stop_comfyui(self) -> None:
        self.comfy.stop()


IMAGES: dict[str, modal.Image] = {}
POOL_CLASSES: dict[str, modal.Cls] = {}
GPUS: dict[str, list[str]] = {}
for _pool in CONFIG.pools:
    GPUS[_pool.name] = _gpus = CONFIG.gpus(_pool.name, DEPLOY_SETTINGS.gpu_config, DEPLOY_SETTINGS.pool_gpus)
    IMAGES[_pool.name] = _image = pool_image(_pool)
    _user_cls = type(_pool.class_name, (PoolWorker,),
                     {"pool": _pool.name, "__module__": __name__, "__qualname__": _pool.class_name})
    globals()[_pool.class_name] = POOL_CLASSES[_pool.name] = worker_app.cls(
        image=_image, gpu=_gpus, env=RUNTIME_ENV, secrets=storage.SECRETS, volumes={MODELS_DIR: storage.models_volume},
        min_containers=_pool.floor, max_containers=_pool.ceiling, scaledown_window=_pool.scaledown_window_s,
        timeout=_pool.timeout_s, startup_timeout=_pool.startup_timeout_s, enable_memory_snapshot=True,
        experimental_options={"enable_gpu_snapshot": True} if _pool.gpu_snapshot else None,
    )(_user_cls)
