"""The deployment's shape, from deploy.toml: ComfyUI pin, custom nodes, models, the API endpoints and the
worker pools (GPUs, floor and ceiling, timeouts, per-pool image additions)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from comfy_saas.config.pools import NAME, PoolSpec, format_pools, parse_pool_gpus


class ComfyUIPin(BaseModel):
    repo: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    python: str = "3.11"
    torch: str
    torchvision: str
    torchaudio: str
    torch_index_url: str
    huggingface_hub: str = "0.36.0"
    port: int = 8188


class CustomNode(BaseModel):
    repo: str
    ref: str = Field(min_length=7)

    @property
    def name(self) -> str:
        return self.repo.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]


class Model(BaseModel):
    repo: str
    file: str
    subdir: str


# A drain's own start (reading its first wake-up, claiming the job) may take this long before a job whose
# timeout is its pool's maximum still fits; without it such a job would never fit any drain.
DRAIN_START_ALLOWANCE_S = 60


class Pool(BaseModel):
    """One worker pool: its own Modal class, GPU fallback list, container floor and ceiling, timeouts, and
    optionally extra custom nodes and models on top of the shared image."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME.pattern)
    gpus: list[str] = Field(min_length=1, description="GPU types in fallback order")
    floor: int = Field(default=0, ge=0, description="containers kept warm, each running a drain that keeps pulling")
    ceiling: int = Field(default=4, ge=1, description="most containers (drains) at once")
    scaledown_window_s: int = Field(default=120, ge=2, le=3600)
    timeout_s: int = Field(default=7200, ge=300, le=86400, description="Modal timeout of one drain input")
    startup_timeout_s: int = Field(default=900, ge=60, le=86400, description="container start incl. snapshot")
    drain_idle_s: float = Field(default=10.0, gt=0)
    drain_margin_s: int = Field(default=300, ge=0, description="kept back at a drain's end for upload and finish")
    gpu_snapshot: bool = Field(default=False, description="alpha: snapshot GPU memory too")
    custom_nodes: list[CustomNode] = Field(default_factory=list)
    models: list[Model] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sizes(self) -> Pool:
        if self.floor > self.ceiling:
            raise ValueError(f"pool {self.name!r}: floor {self.floor} is above its ceiling {self.ceiling}")
        if self.max_job_timeout_s < 60:
            raise ValueError(f"pool {self.name!r}: timeout_s - drain_margin_s leaves jobs under a minute")
        return self

    @property
    def max_job_timeout_s(self) -> int:
        """The longest job a fresh drain of this pool can run start to finish: jobs above it are refused (422)."""
        return self.timeout_s - self.drain_margin_s - DRAIN_START_ALLOWANCE_S

    @property
    def class_name(self) -> str:
        """The pool's Modal class (`modal.Cls.from_name(app, class_name)` from other apps)."""
        return f"ComfyWorker_{self.name}"

    def spec(self) -> PoolSpec:
        return PoolSpec(self.name, self.floor, self.ceiling, self.max_job_timeout_s)


class Api(BaseModel):
    """The web endpoints: a warm floor for submit and job, how many requests one container serves at once."""

    model_config = ConfigDict(extra="forbid")

    min_containers: int = Field(default=0, ge=0, description="containers kept warm for submit and job (get)")
    max_inputs: int = Field(default=100, ge=1, description="requests one container serves at once")
    target_inputs: int = Field(default=80, ge=1, description="the autoscaler aims for this many per container")
    timeout_s: int = Field(default=60, ge=10, le=3600)
    events_stream_s: int = Field(default=120, ge=10, description="an SSE stream ends after this; the client resumes")
    events_timeout_s: int = Field(default=150, ge=10, le=3600)

    @model_validator(mode="after")
    def _consistent(self) -> Api:
        if self.target_inputs > self.max_inputs:
            raise ValueError("api.target_inputs must not exceed api.max_inputs")
        if self.events_timeout_s <= self.events_stream_s:
            raise ValueError("api.events_timeout_s must exceed api.events_stream_s (the stream ends first)")
        return self


class Warm(BaseModel):
    warmup_workflow: str = ""
    preload_checkpoints: list[str] = Field(default_factory=list)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comfyui: ComfyUIPin
    api: Api = Field(default_factory=Api)
    pools: list[Pool] = Field(min_length=1)
    warm: Warm = Field(default_factory=Warm)
    custom_nodes: list[CustomNode] = Field(default_factory=list)
    models: list[Model] = Field(default_factory=list)

    @model_validator(mode="after")
    def _pools_and_preloads(self) -> DeployConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        for pool in self.pools:
            known = {m.file for m in self.models_for(pool.name) if m.subdir == "checkpoints"}
            missing = sorted(set(self.warm.preload_checkpoints) - known)
            if missing:
                raise ValueError(f"warm.preload_checkpoints {missing} are not checkpoints pool {pool.name!r} downloads")
        return self

    @property
    def default_pool(self) -> str:
        """Jobs that name no pool go to the first one."""
        return self.pools[0].name

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def pools_env(self) -> dict[str, str]:
        """What the running service needs to know about the pools (COMFY_POOLS, COMFY_DEFAULT_POOL)."""
        return {"COMFY_POOLS": format_pools(p.spec() for p in self.pools), "COMFY_DEFAULT_POOL": self.default_pool}

    def models_for(self, pool: str) -> list[Model]:
        return [*self.models, *self.pool(pool).models]

    def custom_nodes_for(self, pool: str) -> list[CustomNode]:
        return [*self.custom_nodes, *self.pool(pool).custom_nodes]

    def gpus(self, pool: str, gpu_config: str = "", pool_gpus: str = "") -> list[str]:
        """A pool's GPU types in fallback order: its COMFY_POOL_GPUS entry, else (for the default pool)
        COMFY_GPU_CONFIG, else deploy.toml's list."""
        chosen = parse_pool_gpus(pool_gpus).get(pool)
        if chosen is None and pool == self.default_pool:
            chosen = [g.strip() for g in gpu_config.split(",") if g.strip()]
        return chosen or list(self.pool(pool).gpus)


def load(path: str | Path) -> DeployConfig:
    """Read and validate a deploy.toml."""
    with open(path, "rb") as f:
        return DeployConfig.model_validate(tomllib.load(f))


def preload_workflow(checkpoints: list[str]) -> dict[str, Any]:
    """A prompt that loads each checkpoint and holds it (memory_snapshot_helper's SnapshotHold output)."""
    workflow: dict[str, Any] = {}
    for i, name in enumerate(checkpoints):
        workflow[f"load{i}"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}
        workflow[f"hold{i}"] = {"class_type": "SnapshotHold", "inputs": {"value": [f"load{i}", 0]}}
    return workflow


def installation_report(config: DeployConfig, comfy_dir: Path, models_dir: Path, pool: str | None = None
                        ) -> dict[str, Any]:
    """Which models and custom nodes a pool's image should hold are present or missing on disk."""
    pool = pool or config.default_pool
    models = {f"{m.subdir}/{m.file}": (models_dir / m.subdir / m.file).is_file() for m in config.models_for(pool)}
    nodes = {n.name: (comfy_dir / "custom_nodes" / n.name).is_dir() for n in config.custom_nodes_for(pool)}
    nodes["memory_snapshot_helper"] = (comfy_dir / "custom_nodes" / "memory_snapshot_helper").is_dir()
    return {
        "models_present": sorted(k for k, ok in models.items() if ok),
        "models_missing": sorted(k for k, ok in models.items() if not ok),
        "custom_nodes_present": sorted(k for k, ok in nodes.items() if ok),
        "custom_nodes_missing": sorted(k for k, ok in nodes.items() if not ok),
    }
