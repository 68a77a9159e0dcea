"""The GPU worker pool: one ComfyUI per memory-snapshotted container, draining its pool's queue.

ComfyUI starts during the snapshot phase on the CPU (kept CUDA-free by memory_snapshot_helper/); after a
restore `POST /cuda/set_device` moves it to the GPU before any job, and the worker id is made then. app.py
includes this module's App; the container imports this module on its own.
"""

from __future__ import annotations

from pathlib import Path

import modal

import storage
from comfy_saas.config import Settings
from comfy_saas.config.deploy import load
from comfy_saas.modal_runtime import download_models, extra_model_paths

HERE = Path(__file__).resolve().parent
CONFIG = load(HERE / "deploy.toml")
COMFY_DIR = "/root/comfy/ComfyUI"
MODELS_DIR = "/models"
WORKER_TIMEOUT_S = CONFIG.pool.timeout_s

worker_app = modal.App()  # unnamed: deployed only as part of app.py

pin = CONFIG.comfyui
gpu_image = (
    modal.Image.debian_slim(python_version=pin.python)
    .apt_install("git", "ffmpeg", "libgl1", "libglib2.0-0")
    .pip_install(f"torch=={pin.torch}", f"torchvision=={pin.torchvision}", index_url=pin.torch_index_url)
    .pip_install_from_pyproject(str(HERE / "pyproject.toml"))
    .pip_install("huggingface_hub[hf_transfer]>=0.24")
    .run_commands(
        f"git clone {pin.repo} {COMFY_DIR}",
        f"cd {COMFY_DIR} && git checkout {pin.commit}",
        f"pip install -r {COMFY_DIR}/requirements.txt",
        *[f"git clone {n.repo} {COMFY_DIR}/custom_nodes/{n.name} && cd {COMFY_DIR}/custom_nodes/{n.name} && "
          f"git checkout {n.ref} && (test ! -f requirements.txt || pip install -r requirements.txt)"
          for n in CONFIG.custom_nodes],
        f"printf '{extra_model_paths(MODELS_DIR)}' > {COMFY_DIR}/extra_model_paths.yaml",
    )
    .env({**storage.RUNTIME_ENV, "HF_HUB_ENABLE_HF_TRANSFER": "1"})
    .add_local_dir(HERE / "memory_snapshot_helper", f"{COMFY_DIR}/custom_nodes/memory_snapshot_helper", copy=True)
    .add_local_python_source("comfy_saas", copy=True)
    .run_function(download_models, volumes={MODELS_DIR: storage.models_volume}, args=(CONFIG, MODELS_DIR))
    .add_local_python_source("storage", "worker")
)
if CONFIG.warm.warmup_workflow:
    gpu_image = gpu_image.add_local_file(HERE / CONFIG.warm.warmup_workflow, f"/root/{CONFIG.warm.warmup_workflow}")


def wake(pool: str) -> None:
    """Start a drain of a pool's queue (Modal runs at most max_containers of them at once)."""
    ComfyWorker().drain.spawn(pool)


@worker_app.cls(image=gpu_image, gpu=CONFIG.gpus(Settings.from_env().gpu_config), enable_memory_snapshot=True,
                secrets=storage.SECRETS, volumes={MODELS_DIR: storage.models_volume}, timeout=WORKER_TIMEOUT_S,
                min_containers=CONFIG.pool.min_containers, max_containers=CONFIG.pool.max_containers,
                scaledown_window=CONFIG.pool.scaledown_window_s)
class ComfyWorker:
    @modal.enter(snap=True)
    def launch_comfyui(self) -> None:
        """Snapshot phase: no GPU; memory_snapshot_helper keeps ComfyUI on the CPU."""
        from comfy_saas import modal_runtime
        from comfy_saas.runner.comfy_process import ComfyProcess

        self.comfy = ComfyProcess(COMFY_DIR, CONFIG.comfyui.port, modal_runtime.job_model_args())
        self.comfy.start(ready_timeout_s=600)
        modal_runtime.preload_checkpoints(self.comfy, CONFIG.warm.preload_checkpoints)

    @modal.enter(snap=False)
    def attach_gpu(self) -> None:
        from comfy_saas import modal_runtime

        modal_runtime.attach_gpu(self.comfy)
        warmup = f"/root/{CONFIG.warm.warmup_workflow}" if CONFIG.warm.warmup_workflow else ""
        self.worker = modal_runtime.restored_worker(storage.services(wake, MODELS_DIR), self.comfy, Path("/tmp"),
                                                    warmup, model_shadows=[MODELS_DIR, f"{COMFY_DIR}/models"])

    @modal.method()
    def drain(self, pool: str = "default") -> int:
        self.worker.pool = pool
        return self.worker.drain(CONFIG.pool.drain_idle_s)

    @modal.exit()
    def stop_comfyui(self) -> None:
        self.comfy.stop()


@worker_app.function(image=gpu_image, gpu=CONFIG.gpus(Settings.from_env().gpu_config),
                     volumes={MODELS_DIR: storage.models_volume}, timeout=900)
def verify_setup() -> dict:
    """`modal run app.py::verify_setup`: models and custom nodes present/missing, and ComfyUI starts."""
    from comfy_saas import modal_runtime

    report = modal_runtime.verify_setup(CONFIG, Path(COMFY_DIR), Path(MODELS_DIR), CONFIG.comfyui.port)
    print(report)
    return report
