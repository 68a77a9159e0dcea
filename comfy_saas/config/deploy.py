"""The deployment's shape, from deploy.toml: ComfyUI pin, custom nodes, models, the API endpoints and the
worker pools (GPUs, floor and ceiling, timeouts, per-pool image additions)."""

from __future__ import annotations

import re
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
    constraints: list[str] = Field(default_factory=list, description="more pip constraints for every pip step")
    port: int = 8188

    def constraint_lines(self) -> list[str]:
        """The GPU image's pip constraints: the torch trio, the hub pin, then deploy.toml's own."""
        return [f"torch=={self.torch}", f"torchvision=={self.torchvision}", f"torchaudio=={self.torchaudio}",
                f"huggingface_hub=={self.huggingface_hub}", *self.constraints]


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


# Sizing a container's memory: its baseline (Python, FastAPI, boto3, modal's runtime) plus, for each input it
# serves at once, what one request holds at its peak. A job body is held about three times over (the raw bytes,
# the parsed JSON, the decoded media): 254 MiB above the baseline for an 84 MiB submit, measured through the
# endpoint handler (tests/test_memory_sizing.py keeps it under BODY_COPIES); four copies leave room for the
# allocator. `memory_mib` must cover baseline + max_inputs x peak; the validators say so.
BASELINE_MIB = 256
BODY_COPIES = 4
SMALL_REQUEST_MIB = 2  # a request without a job body: a job view, a page of jobs, an SSE stream's buffer
MIB = 1024 * 1024


def memory_needed_mib(max_inputs: int, request_mib: float) -> int:
    """What a container serving `max_inputs` requests of at most `request_mib` each needs."""
    return int(BASELINE_MIB + max_inputs * request_mib)


def body_request_mib(max_body_bytes: int) -> float:
    """The peak of one request carrying a job body of up to max_body_bytes."""
    return BODY_COPIES * max_body_bytes / MIB


class Api(BaseModel):
    """The web endpoints and remote functions: a warm floor for submit and job, how many requests one container
    serves at once and its memory; those taking a job body (submit, workflow_jobs, put_workflow and their remote
    twins) serve fewer at once with more memory each."""

    model_config = ConfigDict(extra="forbid")

    min_containers: int = Field(default=0, ge=0, description="containers kept warm for submit and job (get)")
    max_inputs: int = Field(default=100, ge=1, description="requests one container serves at once")
    target_inputs: int = Field(default=80, ge=1, description="the autoscaler aims for this many per container")
    memory_mib: int = Field(default=512, ge=128, description="memory of a container serving small requests")
    body_max_inputs: int = Field(default=4, ge=1, description="job-body requests one container serves at once")
    body_target_inputs: int = Field(default=3, ge=1)
    body_memory_mib: int = Field(default=2048, ge=128, description="memory of a container taking job bodies")
    max_body_bytes: int = Field(default=100 * MIB, ge=1, description="the largest body (COMFY_LIMIT_MAX_BODY_BYTES)")
    timeout_s: int = Field(default=60, ge=10, le=3600)
    events_stream_s: int = Field(default=120, ge=10, description="an SSE stream ends after this; the client resumes")
    events_timeout_s: int = Field(default=150, ge=10, le=3600)
    spawn_timeout_s: float = Field(default=5.0, gt=0, le=60, description="one spawn's wait on Modal's rate limit")

    @model_validator(mode="after")
    def _consistent(self) -> Api:
        if self.target_inputs > self.max_inputs or self.body_target_inputs > self.body_max_inputs:
            raise ValueError("api target_inputs must not exceed max_inputs")
        if self.events_timeout_s <= self.events_stream_s:
            raise ValueError("api.events_timeout_s must exceed api.events_stream_s (the stream ends first)")
        _check_memory("api.memory_mib", self.memory_mib, self.max_inputs, SMALL_REQUEST_MIB)
        _check_memory("api.body_memory_mib", self.body_memory_mib, self.body_max_inputs,
                      body_request_mib(self.max_body_bytes))
        return self


class Surfaces(BaseModel):
    """The one ASGI function serving the standard surfaces (Comfy API v2, ComfyUI's native API and its /ws):
    any of its requests may carry a job body, and each open WebSocket holds one input."""

    model_config = ConfigDict(extra="forbid")

    min_containers: int = Field(default=0, ge=0)
    max_inputs: int = Field(default=16, ge=1, description="requests and WebSockets one container serves at once")
    target_inputs: int = Field(default=12, ge=1)
    memory_mib: int = Field(default=7168, ge=128)
    timeout_s: int = Field(default=3600, ge=10, le=86400, description="the longest a WebSocket stays open")

    @model_validator(mode="after")
    def _consistent(self) -> Surfaces:
        if self.target_inputs > self.max_inputs:
            raise ValueError("surfaces.target_inputs must not exceed surfaces.max_inputs")
        return self


def _check_memory(name: str, memory_mib: int, max_inputs: int, request_mib: float) -> None:
    needed = memory_needed_mib(max_inputs, request_mib)
    if memory_mib < needed:
        raise ValueError(f"{name} = {memory_mib} is below the {needed} MiB that {max_inputs} requests of up to "
                         f"{request_mib:.0f} MiB need (baseline {BASELINE_MIB} MiB)")


class Warm(BaseModel):
    warmup_workflow: str = ""
    preload_checkpoints: list[str] = Field(default_factory=list)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comfyui: ComfyUIPin
    api: Api = Field(default_factory=Api)
    surfaces: Surfaces = Field(default_factory=Surfaces)
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

    @model_validator(mode="after")
    def _surfaces_memory(self) -> DeployConfig:
        _check_memory("surfaces.memory_mib", self.surfaces.memory_mib, self.surfaces.max_inputs,
                      body_request_mib(self.api.max_body_bytes))
        if self.surfaces.timeout_s <= self.api.events_stream_s:
            raise ValueError("surfaces.timeout_s must exceed api.events_stream_s (an SSE stream ends first)")
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


def image_requirements(pyproject: str | Path, extras: tuple[str, ...] = ()) -> list[str]:
    """The project's runtime dependencies (and those of `extras`) for an image, less modal: Modal mounts its own
    client into every container, and a second copy from pip could differ from it."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    deps = project["dependencies"] + [d for extra in extras for d in project["optional-dependencies"][extra]]
    return [d for d in deps if re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].lower() != "modal"]


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
