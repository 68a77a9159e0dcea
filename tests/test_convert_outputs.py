"""Output formats: still images re-encoded before upload; animated images and other files left as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from comfy_saas.jobs.model import OutputOptions
from comfy_saas.runner.convert_outputs import convert_file
from comfy_saas.runner.outputs import OutputItem


def item(name: str, kind: str = "image", content_type: str = "image/png") -> OutputItem:
    return OutputItem("9", kind, name, content_type, ref={"filename": name})


def saved(tmp_path: Path, name: str, mode: str = "RGB", **save: object) -> Path:
    path = tmp_path / name
    Image.new(mode, (20, 10), (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30)).save(path, **save)
    return path


@pytest.mark.parametrize(("fmt", "pil", "ext", "content_type"), [
    ("webp", "WEBP", ".webp", "image/webp"), ("jpeg", "JPEG", ".jpg", "image/jpeg"), ("png", "PNG", ".png",
                                                                                     "image/png")])
def test_a_still_image_is_re_encoded_with_name_and_type(tmp_path: Path, fmt: str, pil: str, ext: str,
                                                        content_type: str):
    path = saved(tmp_path, "out_0.webp" if fmt == "png" else "out_0.png")
    got = convert_file(path, item(path.name), OutputOptions(format=fmt, quality=50))
    assert (got.name, got.content_type) == ("out_0" + ext, content_type)
    with Image.open(path) as img:
        assert (img.format, img.size) == (pil, (20, 10))


def test_transparency_is_flattened_onto_white_for_jpeg(tmp_path: Path):
    path = saved(tmp_path, "a.png", "RGBA")
    convert_file(path, item("a.png"), OutputOptions(format="jpeg"))
    with Image.open(path) as img:
        assert img.mode == "RGB" and min(img.getpixel((0, 0))) > 240


def test_original_format_unchanged_png_and_animations_are_left_alone(tmp_path: Path):
    png = saved(tmp_path, "p.png")
    before = png.read_bytes()
    assert convert_file(png, item("p.png"), None).name == "p.png"
    assert convert_file(png, item("p.png"), OutputOptions()).name == "p.png"
    assert convert_file(png, item("p.png"), OutputOptions(format="png")).name == "p.png"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    animated = tmp_path / "anim.webp"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    anim_bytes = animated.read_bytes()
    assert convert_file(animated, item("anim.webp", content_type="image/webp"),
                        OutputOptions(format="jpeg")).name == "anim.webp"
    assert animated.read_bytes() == anim_bytes and png.read_bytes() == before


def test_non_images_and_unreadable_files_are_untouched(tmp_path: Path):
    clip = tmp_path / "v.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert convert_file(clip, item("v.mp4", "video", "video/mp4"), OutputOptions(format="webp")).name == "v.mp4"
    broken = tmp_path / "b.png"
    broken.write_bytes(b"not a png")
    assert convert_file(broken, item("b.png"), OutputOptions(format="webp")).name == "b.png"
    assert broken.read_bytes() == b"not a png"
