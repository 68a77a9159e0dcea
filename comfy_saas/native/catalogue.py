"""What the pool offers, in ComfyUI's shapes: /object_info rebuilt from the catalogue its workers published
(jobs/catalogues.py keeps it compacted), the models its loaders list, and /system_stats with the pool's GPU."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import comfy_saas
from comfy_saas.config import Settings
from comfy_saas.config.pools import parse_pool_gpus
from comfy_saas.jobs.request import MODEL_FOLDERS

# The loader inputs whose choices are a models folder's files (ComfyUI's built-in loaders).
FOLDER_INPUTS = {
    "checkpoints": [("CheckpointLoaderSimple", "ckpt_name")],
    "loras": [("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")],
    "vae": [("VAELoader", "vae_name")],
    "clip": [("CLIPLoader", "clip_name")],
    "text_encoders": [("CLIPLoader", "clip_name")],
    "unet": [("UNETLoader", "unet_name")],
    "diffusion_models": [("UNETLoader", "unet_name")],
    "controlnet": [("ControlNetLoader", "control_net_name")],
    "upscale_models": [("UpscaleModelLoader", "model_name")],
    "clip_vision": [("CLIPVisionLoader", "clip_name")],
    "style_models": [("StyleModelLoader", "style_model_name")],
    "gligen": [("GLIGENLoader", "gligen_name")],
    "hypernetworks": [("HypernetworkLoader", "hypernetwork_name")],
}
# GiB of memory per GPU type Modal offers, for /system_stats (ComfyUI reports bytes).
GPU_MEMORY_GIB = {"T4": 16, "L4": 24, "A10G": 24, "A10": 24, "L40S": 48, "A100": 40, "A100-40GB": 40,
                  "A100-80GB": 80, "H100": 80, "H100!": 80, "H200": 141, "B200": 180}
# What ComfyUI 0.3.64 (deploy.toml's commit) reports about itself and the frontend it requires.
COMFYUI_VERSIONS = {"comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95"}
_OPTION_KEYS = {"default": "default", "min": "min", "max": "max", "step": "step", "tooltip": "tooltip"}
_FLAGS = {"cag": "control_after_generate", "force": "forceInput", "dyn": "dynamicPrompts"}


def input_spec(entry: dict[str, Any], uploads: list[str] | None = None) -> list[Any]:
    """One compact input entry as ComfyUI's [type or choices, options]; an upload combo lists `uploads` (the
    caller's files, as ComfyUI lists its input folder)."""
    opts = {name: entry[key] for key, name in _OPTION_KEYS.items() if key in entry}
    opts.update({name: entry[key] for key, name in _FLAGS.items() if key in entry})
    if entry.get("upload"):
        opts[entry["upload"]] = True
    if "choices" in entry:
        return [entry["choices"], opts]
    if entry.get("combo"):
        return [list(uploads or []) if entry.get("upload") else [], opts]
    return [entry.get("type", "*"), opts]


def node_info(name: str, cls: dict[str, Any], uploads: list[str] | None = None) -> dict[str, Any]:
    """A class of the catalogue as ComfyUI's /object_info entry (what the compact form keeps of it)."""
    sections = {s: {f: input_spec(e, uploads) for f, e in (cls.get(s) or {}).items()}
                for s in ("required", "optional")}
    outputs = list(cls.get("outputs") or [])
    return {"input": {s: v for s, v in sections.items() if v or s == "required"},
            "input_order": {s: list(v) for s, v in sections.items() if v or s == "required"},
            "output": outputs, "output_is_list": [False] * len(outputs), "output_name": outputs,
            "name": name, "display_name": cls.get("display_name") or name, "description": "",
            "python_module": "nodes", "category": "comfy-saas", "output_node": bool(cls.get("output_node"))}


def object_info(nodes: dict[str, Any] | None, only: str | None = None, uploads: list[str] | None = None
                ) -> dict[str, Any]:
    """/object_info (or /object_info/{only}: {} for an unknown class, as ComfyUI answers)."""
    nodes = nodes or {}
    names = [only] if only is not None else list(nodes)
    return {n: node_info(n, nodes[n], uploads) for n in names if isinstance(nodes.get(n), dict)}


def output_nodes(workflow: dict[str, Any], nodes: dict[str, Any] | None) -> list[str]:
    """The prompt's output nodes (ComfyUI's outputs_to_execute) as far as the catalogue knows them."""
    nodes = nodes or {}
    return [nid for nid, node in workflow.items()
            if isinstance(node, dict) and (nodes.get(node.get("class_type")) or {}).get("output_node")]


def folder_files(nodes: dict[str, Any] | None, folder: str) -> list[str]:
    """The files a models folder holds as the pool's loaders list them."""
    found: list[str] = []
    for cls, field in FOLDER_INPUTS.get(folder, []):
        entry = ((nodes or {}).get(cls) or {}).get("required", {}).get(field) or {}
        found += [c for c in entry.get("choices") or [] if c not in found]
    return found


def folders() -> list[str]:
    return list(MODEL_FOLDERS)


def pool_gpus(settings: Settings, pool: str) -> list[str]:
    """The pool's GPU types: COMFY_POOL_GPUS, else deploy.toml beside the package (where the API image has it)."""
    chosen = parse_pool_gpus(settings.pool_gpus).get(pool)
    if chosen:
        return chosen
    config = _deploy_config()
    if config is None or pool not in {p.name for p in config.pools}:
        return []
    return config.gpus(pool)


@functools.cache
def _deploy_config() -> Any:
    from comfy_saas.config import deploy

    path = Path(comfy_saas.__file__).resolve().parents[1] / "deploy.toml"
    try:
        return deploy.load(path)
    except (OSError, ValueError):  # a wheel without the file: the device is then reported as unknown
        return None


def system_stats(settings: Settings, pool: str) -> dict[str, Any]:
    """ComfyUI's /system_stats for a pool: its first GPU type as the device (memory as Modal's GPU has it)."""
    gpus = pool_gpus(settings, pool)
    name = gpus[0] if gpus else "cpu"
    memory = GPU_MEMORY_GIB.get(name.split(":")[0], 0) * 2**30
    device = {"name": name if gpus else "cpu", "type": "cuda" if gpus else "cpu", "index": 0 if gpus else None,
              "vram_total": memory, "vram_free": memory, "torch_vram_total": memory, "torch_vram_free": memory}
    return {"system": {"os": "posix", "ram_total": 0, "ram_free": 0, **COMFYUI_VERSIONS,
                       "python_version": "3.11", "pytorch_version": "",
                       "embedded_python": False, "argv": ["comfy-saas", "--pool", pool]},
            "devices": [device]}
