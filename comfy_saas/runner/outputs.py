"""Every output a finished prompt reports in its history, and the stable name each is stored under."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from comfy_saas.backends.objects import guess_content_type

# Where custom nodes put media in their UI output, by key.
_KIND_BY_KEY = {"images": "image", "gifs": "video", "videos": "video", "video": "video", "audio": "audio",
                "audios": "audio", "text": "text", "texts": "text", "meshes": "file", "files": "file"}
_COUNTER = re.compile(r"_\d{5}_(?=\.[^.]+$)|_\d{5}_?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]+")


@dataclass(frozen=True)
class OutputItem:
    """One output: a file ComfyUI wrote (`ref` for /view) or a text it reported inline."""

    node_id: str
    kind: str
    name: str
    content_type: str
    ref: dict[str, Any] | None = None
    text: str | None = None


def stable_name(filename: str, index: int) -> str:
    """Drop ComfyUI's per-server counter so a retried attempt writes the same object key."""
    base = PurePosixPath(filename).name
    stem = _UNSAFE.sub("_", _COUNTER.sub("", base)).strip("._") or "output"
    suffix = PurePosixPath(base).suffix
    stem = stem.removesuffix(suffix) if suffix else stem
    return f"{stem}_{index}{suffix}"


def _kind(key: str, content_type: str) -> str:
    by_type = content_type.split("/")[0]
    if key == "images" and by_type == "video":
        return "video"
    if key in _KIND_BY_KEY:
        return _KIND_BY_KEY[key]
    return by_type if by_type in {"image", "video", "audio", "text"} else "file"


def collect(outputs: dict[str, Any], include_temp: bool = False) -> list[OutputItem]:
    """All files and texts in a history entry's `outputs`; temp previews only when asked."""
    items: list[OutputItem] = []
    for node_id in sorted(outputs, key=lambda n: (len(n), n)):
        index = 0
        for key, values in (outputs[node_id] or {}).items():
            for value in values if isinstance(values, list) else []:
                item = _item(node_id, key, value, index, include_temp)
                if item is not None:
                    items.append(item)
                    index += 1
    return items


def _item(node_id: str, key: str, value: Any, index: int, include_temp: bool) -> OutputItem | None:
    if isinstance(value, dict) and isinstance(value.get("filename"), str):
        if value.get("type") == "temp" and not include_temp:
            return None
        content_type = value.get("format") if "/" in str(value.get("format", "")) else None
        content_type = content_type or guess_content_type(value["filename"])
        return OutputItem(node_id, _kind(key, content_type), stable_name(value["filename"], index), content_type,
                          ref=value)
    if isinstance(value, str) and key in {"text", "texts", "string"}:
        return OutputItem(node_id, "text", f"text_{index}.txt", "text/plain; charset=utf-8", text=value)
    return None
