"""The nodes the double really executes, with Pillow, and their ComfyUI-style schemas. Model loaders read their
files (a model is the digest of what was loaded), so a downloaded LoRA changes a job's output."""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageFilter, ImageOps

from comfy_saas.comfyui_double import folder_paths
from comfy_saas.comfyui_double.model_paths import full_path, list_models

SCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_PIL_METHOD = {"nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR, "area": Image.BOX,
               "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
INT = {"default": 512, "min": 1, "max": 16384, "step": 1}


class Context(Protocol):
    """What a running node may ask of the executor."""

    dirs: dict[str, Path]
    model_paths: dict[str, list[Path]]

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None: ...
    def progress_text(self, text: str) -> None: ...
    def sleep(self, seconds: float) -> None: ...


@dataclass
class NodeSpec:
    name: str
    required: dict[str, tuple]
    returns: tuple[str, ...]
    fn: Callable[..., tuple[tuple, dict | None]]
    optional: dict[str, tuple] = field(default_factory=dict)
    output_node: bool = False
    category: str = "double"
    folders: dict[str, str] = field(default_factory=dict)  # input -> the model folder its choices list

    def schema(self, input_dir: Path, model_paths: dict[str, list[Path]] | None = None) -> dict[str, Any]:
        required = dict(self.required)
        if self.name == "LoadImage":
            required["image"] = (sorted(list_inputs(input_dir)), {"image_upload": True})
        for name, folder in self.folders.items():
            required[name] = (list_models(model_paths or {}, folder), {})
        return {
            "input": {"required": {k: list(v) for k, v in required.items()},
                      **({"optional": {k: list(v) for k, v in self.optional.items()}} if self.optional else {})},
            "input_order": {"required": list(required), **({"optional": list(self.optional)} if self.optional else {})},
            "output": list(self.returns), "output_is_list": [False] * len(self.returns),
            "output_name": list(self.returns), "name": self.name, "display_name": self.name,
            "description": "", "python_module": "nodes", "category": self.category, "output_node": self.output_node,
        }


NODES: dict[str, NodeSpec] = {}


def node(name: str, required: dict[str, tuple], returns: tuple[str, ...] = (), output_node: bool = False,
         optional: dict[str, tuple] | None = None, folders: dict[str, str] | None = None) -> Callable:
    def register(fn: Callable) -> Callable:
        NODES[name] = NodeSpec(name, required, returns, fn, optional or {}, output_node, folders=folders or {})
        return fn
    return register


def list_inputs(input_dir: Path) -> list[str]:
    """LoadImage's choices: the regular files at the top of the input folder (subfolders are not listed,
    though a name with a subfolder is still accepted, as in ComfyUI)."""
    if not input_dir.is_dir():
        return []
    return sorted(p.name for p in input_dir.iterdir() if p.is_file())


def save_path(ctx: Context, kind: str, filename_prefix: str, ext: str) -> tuple[Path, dict[str, str]]:
    """ComfyUI's get_save_image_path: refuses (at run time) a prefix that leaves the folder."""
    folder, prefix, counter, subfolder = folder_paths.get_save_image_path(filename_prefix, ctx.dirs[kind])
    name = f"{prefix}_{counter:05}_.{ext}"
    return Path(folder) / name, {"filename": name, "subfolder": subfolder, "type": kind}


@node("EmptyImage", {"width": ("INT", INT), "height": ("INT", INT),
                     "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                     "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"})},
      ("IMAGE",))
def empty_image(ctx: Context, width: int, height: int, batch_size: int, color: int) -> tuple:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return ([Image.new("RGB", (width, height), rgb) for _ in range(batch_size)],), None


@node("NoiseImage", {"width": ("INT", {"default": 64, "min": 1, "max": 4096, "step": 1}),
                     "height": ("INT", {"default": 64, "min": 1, "max": 4096, "step": 1}),
                     "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                      "control_after_generate": True})},
      ("IMAGE",))
def noise_image(ctx: Context, width: int, height: int, seed: int) -> tuple:
    """Random pixels from the seed: the same seed gives the same image (a stand-in for sampling)."""
    data = random.Random(seed).randbytes(width * height * 3)
    return ([Image.frombytes("RGB", (width, height), data)],), None


@node("LoadImage", {"image": ([], {"image_upload": True})}, ("IMAGE", "MASK"))
def load_image(ctx: Context, image: str) -> tuple:
    path = folder_paths.get_annotated_filepath(image, ctx.dirs)
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
    return ([rgba.convert("RGB")], [rgba.getchannel("A")]), None


@node("ImageInvert", {"image": ("IMAGE", {})}, ("IMAGE",))
def image_invert(ctx: Context, image: list) -> tuple:
    return ([ImageOps.invert(i.convert("RGB")) for i in image],), None


@node("ImageScale", {"image": ("IMAGE", {}), "upscale_method": (SCALE_METHODS, {}),
                     "width": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                     "height": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                     "crop": (["disabled", "center"], {})}, ("IMAGE",))
def image_scale(ctx: Context, image: list, upscale_method: str, width: int, height: int, crop: str) -> tuple:
    out = []
    for img in image:
        w = width or max(1, round(img.width * height / img.height))
        h = height or max(1, round(img.height * width / img.width))
        if crop == "center":
            out.append(ImageOps.fit(img, (w, h), _PIL_METHOD[upscale_method]))
        else:
            out.append(img.resize((w, h), _PIL_METHOD[upscale_method]))
    return (out,), None


@node("ImageScaleBy", {"image": ("IMAGE", {}), "upscale_method": (SCALE_METHODS, {}),
                       "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}, ("IMAGE",))
def image_scale_by(ctx: Context, image: list, upscale_method: str, scale_by: float) -> tuple:
    out = []
    for img in image:
        w, h = round(img.width * scale_by), round(img.height * scale_by)
        if w <= 0 or h <= 0:
            raise RuntimeError(f"Input and output sizes should be greater than 0, but got input "
                               f"(H: {img.height}, W: {img.width}) output (H: {h}, W: {w})")
        out.append(img.resize((w, h), _PIL_METHOD[upscale_method]))
    return (out,), None


@node("ImageBlur", {"image": ("IMAGE", {}), "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31}),
                    "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0})}, ("IMAGE",))
def image_blur(ctx: Context, image: list, blur_radius: int, sigma: float) -> tuple:
    return ([i.filter(ImageFilter.GaussianBlur(sigma * blur_radius / 2)) for i in image],), None


@node("SaveImage", {"images": ("IMAGE", {"tooltip": "The images to save."}),
                    "filename_prefix": ("STRING", {"default": "ComfyUI"})}, output_node=True)
def save_image(ctx: Context, images: list, filename_prefix: str) -> tuple:
    results = []
    for img in images:
        path, ref = save_path(ctx, "output", filename_prefix, "png")
        img.save(path, compress_level=4)
        results.append(ref)
    return (), {"images": results}


@node("PreviewImage", {"images": ("IMAGE", {})}, output_node=True)
def preview_image(ctx: Context, images: list) -> tuple:
    prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    results = []
    for img in images:
        path, ref = save_path(ctx, "temp", prefix, "png")
        img.save(path, compress_level=1)
        results.append(ref)
    return (), {"images": results}


@node("SlowPassthrough", {"image": ("IMAGE", {}), "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                          "delay": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 60.0}),
                          "send_preview": ("BOOLEAN", {"default": False}),
                          "send_text": ("BOOLEAN", {"default": False}),
                          "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1})}, ("IMAGE",))
def slow_passthrough(ctx: Context, image: list, steps: int, delay: float, send_preview: bool, send_text: bool,
                     seed: int) -> tuple:
    for step in range(1, steps + 1):
        ctx.sleep(delay)
        ctx.progress(step, steps, image[0] if send_preview else None)
        if send_text:
            ctx.progress_text(f"step {step}/{steps}")
    return (image,), None


@node("FailNode", {"image": ("IMAGE", {}), "message": ("STRING", {"default": "failure"})}, ("IMAGE",))
def fail_node(ctx: Context, image: list, message: str) -> tuple:
    raise RuntimeError(message)


@node("SaveText", {"text": ("STRING", {"multiline": True}),
                   "filename_prefix": ("STRING", {"default": "ComfyUI"})}, output_node=True)
def save_text(ctx: Context, text: str, filename_prefix: str) -> tuple:
    path, ref = save_path(ctx, "output", filename_prefix, "txt")
    path.write_text(text, encoding="utf-8")
    return (), {"text": [ref]}


@node("SaveAnimatedGIF", {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                          "frames": ("INT", {"default": 4, "min": 1, "max": 120})}, output_node=True)
def save_animated_gif(ctx: Context, images: list, filename_prefix: str, frames: int) -> tuple:
    base = images[0].convert("RGB")
    seq = [base if i % 2 == 0 else ImageOps.invert(base) for i in range(frames)]
    path, ref = save_path(ctx, "output", filename_prefix, "gif")
    seq[0].save(path, save_all=True, append_images=seq[1:], duration=100, loop=0)
    return (), {"gifs": [{**ref, "format": "image/gif", "frame_rate": 10.0}]}


@node("SaveAudioWAV", {"seconds": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 10.0}),
                       "frequency": ("FLOAT", {"default": 440.0, "min": 20.0, "max": 20000.0}),
                       "filename_prefix": ("STRING", {"default": "audio/ComfyUI"})}, output_node=True)
def save_audio_wav(ctx: Context, seconds: float, frequency: float, filename_prefix: str) -> tuple:
    rate = 16_000
    samples = (int(12_000 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(rate * seconds)))
    path, ref = save_path(ctx, "output", filename_prefix, "wav")
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return (), {"audio": [ref]}


# --- model loaders: a "model" is the digest of the files loaded into it ------------------------------

STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _mix(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


@node("CheckpointLoaderSimple", {"ckpt_name": ([], {})}, ("MODEL", "CLIP", "VAE"), folders={"ckpt_name": "checkpoints"})
def checkpoint_loader(ctx: Context, ckpt_name: str) -> tuple:
    digest = _file_digest(full_path(ctx.model_paths, "checkpoints", ckpt_name))
    return ({"digest": _mix("model", digest)}, {"digest": _mix("clip", digest)}, {"digest": _mix("vae", digest)}), None


@node("LoraLoader", {"model": ("MODEL", {}), "clip": ("CLIP", {}), "lora_name": ([], {}),
                     "strength_model": ("FLOAT", STRENGTH), "strength_clip": ("FLOAT", STRENGTH)},
      ("MODEL", "CLIP"), folders={"lora_name": "loras"})
def lora_loader(ctx: Context, model: dict, clip: dict, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple:
    if strength_model == 0 and strength_clip == 0:
        return (model, clip), None  # ComfyUI does not even open the file
    digest = _file_digest(full_path(ctx.model_paths, "loras", lora_name))
    return ({"digest": _mix(model["digest"], digest, strength_model)},
            {"digest": _mix(clip["digest"], digest, strength_clip)}), None


@node("LoraLoaderModelOnly", {"model": ("MODEL", {}), "lora_name": ([], {}), "strength_model": ("FLOAT", STRENGTH)},
      ("MODEL",), folders={"lora_name": "loras"})
def lora_loader_model_only(ctx: Context, model: dict, lora_name: str, strength_model: float) -> tuple:
    if strength_model == 0:
        return (model,), None
    digest = _file_digest(full_path(ctx.model_paths, "loras", lora_name))
    return ({"digest": _mix(model["digest"], digest, strength_model)},), None


@node("ModelSwatch", {"model": ("MODEL", {}), "width": ("INT", INT), "height": ("INT", INT)}, ("IMAGE",))
def model_swatch(ctx: Context, model: dict, width: int, height: int) -> tuple:
    """The double's stand-in for sampling: an image whose colour is the model's digest."""
    rgb = tuple(bytes.fromhex(model["digest"][:6]))
    return ([Image.new("RGB", (width, height), rgb)],), None
@node("ReportOutput", {"filename": ("STRING", {"default": "ComfyUI_00001_.png"}),
                       "subfolder": ("STRING", {"default": ""}),
                       "folder_type": (["output", "temp", "input"], {})}, output_node=True)
def report_output(ctx: Context, filename: str, subfolder: str, folder_type: str) -> tuple:
    """Reports an output file it never wrote, as a misbehaving custom node might (tests of /view refusals)."""
    return (), {"images": [{"filename": filename, "subfolder": subfolder, "type": folder_type}]}
