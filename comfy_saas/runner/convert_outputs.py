"""Still images re-encoded before upload when the job asks (`output: {"format", "quality"}`).

png, webp or jpeg; the file name's extension and the content type follow. Animated images (animated WebP,
APNG, GIF), files Pillow cannot read and every non-image output are left exactly as ComfyUI wrote them.
Converting to the format a file already has only re-encodes when a quality is given (png never).
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from comfy_saas.jobs.model import OutputOptions
from comfy_saas.runner.outputs import OutputItem

DEFAULT_QUALITY = {"webp": 80, "jpeg": 90}
_PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_CONTENT_TYPE = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
_EXTENSION = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}


def may_convert(item: OutputItem, options: OutputOptions | None) -> bool:
    """Whether the options may re-encode this output (else it is stored exactly as ComfyUI wrote it)."""
    return options is not None and options.format != "original" and item.kind == "image" and item.text is None


def convert_file(path: Path, item: OutputItem, options: OutputOptions | None) -> OutputItem:
    """Re-encode the image at `path` in place as the options ask; the item with its new name and type."""
    if not may_convert(item, options):
        return item
    from PIL import Image  # heavy: only where outputs are converted

    try:
        with Image.open(path) as img:
            if getattr(img, "is_animated", False) or _unchanged(img.format, options):
                return item
            img.load()
            data = _encode(img, options)
    except (OSError, ValueError, Image.DecompressionBombError):
        return item  # not an image Pillow reads: stored as it is
    path.write_bytes(data)
    stem = PurePosixPath(item.name).stem
    return replace(item, name=stem + _EXTENSION[options.format], content_type=_CONTENT_TYPE[options.format])


def _unchanged(current: str | None, options: OutputOptions) -> bool:
    same = current == _PIL_FORMAT[options.format]
    return same and (options.format == "png" or options.quality is None)


def _encode(img: Any, options: OutputOptions) -> bytes:
    fmt = options.format
    quality = options.quality or DEFAULT_QUALITY.get(fmt, 90)
    frame = _for(img, fmt)
    out = io.BytesIO()
    if fmt == "png":
        frame.save(out, "PNG", compress_level=6)
    elif fmt == "webp":
        frame.save(out, "WEBP", quality=quality, method=4)
    else:
        frame.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _for(img: Any, fmt: str) -> Any:
    """The image in a mode the format can hold; JPEG has no alpha, so transparency is flattened onto white."""
    from PIL import Image

    alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if fmt == "png" and img.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        return img
    if fmt == "webp" or not alpha:
        return img.convert("RGBA" if alpha and fmt == "webp" else "RGB")
    rgba = img.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
