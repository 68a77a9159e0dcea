"""Values for a template's inputs: checked against their type and bounds (422 naming the input and the bound),
then turned into overrides of the node inputs they set, media items for media inputs given by URL, and
seeds drawn for seed inputs given -1 or "random" (one draw per input, shared by all its targets)."""

from __future__ import annotations

import math
import mimetypes
import random
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from comfy_saas.errors import InvalidInput
from comfy_saas.workflows import seeds
from comfy_saas.workflows.inputs import TemplateInput

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DATA_URL = re.compile(r"^data:([\w.+\-]+/[\w.+\-]+);base64,")


def check(values: Any, inputs: dict[str, TemplateInput]) -> None:
    """Every value fits its input; unknown names and missing required inputs are refused."""
    if not isinstance(values, dict):
        raise InvalidInput("inputs: give an object {name: value}", field="inputs")
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        known = ", ".join(inputs) or "none"
        raise InvalidInput(f"inputs.{unknown[0]}: not an input of this template (its inputs: {known})",
                           field=f"inputs.{unknown[0]}")
    for name, i in inputs.items():
        if name in values:
            check_value(i, values[name])
        elif i.default is None:
            raise InvalidInput(f"inputs.{name}: required (the workflow has no value for it)", field=f"inputs.{name}")


def check_value(i: TemplateInput, value: Any) -> None:
    """422 naming the input and what it needs: its type, a bound, or its choices."""
    where = f"inputs.{i.name}"
    if i.seed and seeds.wants_random(value):
        return
    problem = _type_problem(i, value) or _bound_problem(i, value)
    if problem:
        raise InvalidInput(f"{where}: {problem}", field=where)


def _type_problem(i: TemplateInput, value: Any) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if i.kind == "INT" and not (number and float(value).is_integer()):
        return "must be an integer" + (' (or -1 / "random" for a new seed)' if i.seed else "")
    if i.kind == "FLOAT" and not (number and math.isfinite(value)):
        return "must be a number"
    if i.kind == "BOOLEAN" and not isinstance(value, bool):
        return "must be true or false"
    if i.kind in ("STRING", "COMBO") and not isinstance(value, str):
        return "must be a string"
    if i.kind == "COMBO" and not i.media and value not in (i.entry.get("choices") or []):
        choices = i.entry.get("choices") or []
        shown = ", ".join(choices[:20]) + (f" (and {len(choices) - 20} more)" if len(choices) > 20 else "")
        return f"{value!r} is not one of the choices: {shown}"
    return None


def _bound_problem(i: TemplateInput, value: Any) -> str | None:
    if i.kind not in ("INT", "FLOAT"):
        return None
    low, high = i.entry.get("min"), i.entry.get("max")
    if low is not None and value < low:
        return f"{value} is below the minimum {low}"
    if high is not None and value > high:
        return f"{value} is above the maximum {high}"
    return None


def to_overrides(values: dict[str, Any], inputs: dict[str, TemplateInput], rng: random.Random
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[dict[str, Any]]]:
    """(overrides, media items, seeds drawn) for checked values."""
    overrides, media, drawn = [], [], []
    for name, value in values.items():
        i = inputs[name]
        if i.seed and seeds.wants_random(value):
            value = seeds.draw_seed(i.entry, rng)
            drawn += [{"node": node, "input": inp, "value": value, "name": name} for node, inp in i.targets]
        elif i.media:
            value, item = media_item(name, value)
            media += [item] if item else []
        elif i.kind == "INT":
            value = int(value)
        overrides += [{"node": node, "input": inp, "value": value} for node, inp in i.targets]
    return overrides, media, drawn


def media_item(name: str, value: str) -> tuple[str, dict[str, str] | None]:
    """A media input's value: a URL or data: URL becomes a media item (and its name the value); a plain name
    refers to an item of the job's `media`."""
    found = _DATA_URL.match(value)
    if found:
        ext = (mimetypes.guess_extension(found.group(1)) or ".bin").lstrip(".")
        file_name = f"input-{name}.{ext}"
        return file_name, {"name": file_name, "base64": value}
    if value.lower().startswith(("http://", "https://")):
        base = _UNSAFE.sub("_", PurePosixPath(urlsplit(value).path).name).strip("._")[:100] or "file"
        file_name = f"input-{name}-{base}"
        return file_name, {"name": file_name, "url": value}
    return value, None
