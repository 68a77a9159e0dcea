"""The deployment's shape, from deploy.toml: ComfyUI pin, custom nodes, models, GPUs and pool size."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class ComfyUIPin(BaseModel):
    repo: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    python: str = "3.11"
    torch: str
    torchvision: str
    torch_index_url: str
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


class Pool(BaseModel):
    min_containers: int = Field(default=0, ge=0)
    max_containers: int = Field(default=4, ge=1)
    scaledown_window_s: int = 120
    timeout_s: int = 3600
    drain_idle_s: float = 10.0


class Warm(BaseModel):
    warmup_workflow: str = ""
    preload_checkpoints: list[str] = Field(default_factory=list)


class DeployConfig(BaseModel):
    comfyui: ComfyUIPin
    gpu: dict[str, list[str]] = Field(default_factory=lambda: {"types": ["L40S"]})
    pool: Pool = Field(default_factory=Pool)
    warm: Warm = Field(default_factory=Warm)
    custom_nodes: list[CustomNode] = Field(default_factory=list)
    models: list[Model] = Field(default_factory=list)

    def gpus(self, override: str = "") -> list[str]:
        """GPU types in fallback order: the override (comma-separated, COMFY_GPU_CONFIG) if set, else deploy.toml."""
        chosen = [g.strip() for g in override.split(",") if g.strip()]
        return chosen or list(self.gpu.get("types", []))


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


def installation_report(config: DeployConfig, comfy_dir: Path, models_dir: Path) -> dict[str, Any]:
    """Which configured models and custom nodes are present or missing on disk."""
    models = {f"{m.subdir}/{m.file}": (models_dir / m.subdir / m.file).is_file() for m in config.models}
    nodes = {n.name: (comfy_dir / "custom_nodes" / n.name).is_dir() for n in config.custom_nodes}
    nodes["memory_snapshot_helper"] = (comfy_dir / "custom_nodes" / "memory_snapshot_helper").is_dir()
    return {
        "models_present": sorted(k for k, ok in models.items() if ok),
        "models_missing": sorted(k for k, ok in models.items() if not ok),
        "custom_nodes_present": sorted(k for k, ok in nodes.items() if ok),
        "custom_nodes_missing": sorted(k for k, ok in nodes.items() if not ok),
    }
