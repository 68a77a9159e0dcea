"""The node catalogue as the store keeps it: ComfyUI's /object_info compacted to what validation, UI-format
conversion and typed template inputs need, small enough for one Dict value.

Per class: `required` / `optional` inputs in declaration order (the order of a node's widgets), `outputs`,
and `display_name` / `output_node` when they matter. Per input the entry has either `choices` (a combo
list) or `type`, plus, only when present: `default`, `min`, `max`, `step`, `tooltip`, `combo` (a combo
whose list is a folder: upload combos), `upload` (the upload flag), `cag` (control_after_generate),
`force` (forceInput), `dyn` (dynamicPrompts), `remote` (companion widget count of a remote combo).
Hidden inputs are left out: ComfyUI fills them itself.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Widgets whose value the browser computes when it queues (a webcam frame, a 3D render): not convertible.
BROWSER_TYPES = frozenset({"WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload", "file_upload", "upload")
_NUMBERS = ("default", "min", "max", "step")


def _options(spec: list[Any]) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _choices(spec: list[Any], opts: dict[str, Any]) -> list[str] | None:
    if any(opts.get(flag) for flag in UPLOAD_FLAGS):
        return None  # the list is the input folder; submitted media land there at run time
    if isinstance(spec[0], list):
        return [str(c) for c in spec[0]]
    if spec[0] == "COMBO":
        return [str(c) for c in opts.get("options", [])]
    return None


def compact_input(spec: Any) -> dict[str, Any]:
    """One input's entry (see the module docstring)."""
    spec = spec if isinstance(spec, list) and spec else [spec]
    opts = _options(spec)
    choices = _choices(spec, opts)
    entry: dict[str, Any] = {"choices": choices} if choices is not None else {"type": str(spec[0])}
    if choices is None and (isinstance(spec[0], list) or spec[0] == "COMBO"):
        entry["combo"] = True
    entry.update({k: opts[k] for k in _NUMBERS if k in opts and _plain(opts[k])})
    if isinstance(opts.get("tooltip"), str) and (choices is not None or str(spec[0]) in WIDGET_TYPES):
        entry["tooltip"] = opts["tooltip"]  # shown in template schemas; sockets never become template inputs
    upload = next((flag for flag in UPLOAD_FLAGS if opts.get(flag)), None)
    flags = {"upload": upload, "cag": opts.get("control_after_generate"), "force": opts.get("forceInput") or None,
             "dyn": opts.get("dynamicPrompts") or None}
    entry.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(opts.get("remote"), dict):
        entry["remote"] = 2 if opts["remote"].get("refresh_button") else 1
    return entry


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def compact_class(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """One class's entry: inputs by section in declaration order, outputs, title and output-node flag."""
    inputs = info.get("input") or {}
    out: dict[str, Any] = {section: {field: compact_input(spec) for field, spec in (inputs.get(section) or {}).items()}
                           for section in ("required", "optional")}
    out["outputs"] = [str(o) for o in info.get("output", [])]
    if info.get("display_name") and info["display_name"] != name:
        out["display_name"] = str(info["display_name"])
    if info.get("output_node"):
        out["output_node"] = True
    return out


# --- reading entries ------------------------------------------------------------------------------


def kind(entry: dict[str, Any]) -> str:
    """COMBO for any combo, else the declared type (INT, IMAGE, ...)."""
    return "COMBO" if "choices" in entry or entry.get("combo") else str(entry.get("type", ""))


def is_widget(entry: dict[str, Any]) -> bool:
    """Whether the frontend gives this input a widget (and a widgets_values slot); forceInput ones have none."""
    return not entry.get("force") and (kind(entry) in WIDGET_TYPES or kind(entry) in BROWSER_TYPES)


def has_control(name: str, entry: dict[str, Any]) -> bool:
    """The frontend's control_after_generate rule: the flag when given, else INT inputs named seed/noise_seed."""
    cag = entry.get("cag")
    if cag is None:
        return kind(entry) == "INT" and name in ("seed", "noise_seed")
    return bool(cag)


def is_seed(name: str, entry: dict[str, Any]) -> bool:
    """A seed-like input: an INT with a control_after_generate widget."""
    return kind(entry) == "INT" and has_control(name, entry)


def inputs_of(cls: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All inputs of a class entry, required first, in declaration order."""
    return {**(cls.get("required") or {}), **(cls.get("optional") or {})}


def title_of(class_type: str, cls: dict[str, Any] | None) -> str:
    return (cls or {}).get("display_name") or class_type
