"""A UI node's saved widget values mapped to its inputs, the way ComfyUI's frontend lays out widgets.

`widgets_values` holds one slot per widget in declaration order (required, then optional; forceInput inputs
have none), plus companion slots that never reach ComfyUI: the control_after_generate value after a seed-like
widget (and a filter-list value after a combo with one), the upload button at the end of the required
section, a remote combo's refresh widgets, the audio player slot of audio nodes. Saves from older frontends
differ slightly (forceInput slots, `null` holes), so the layout whose length matches is used.
"""

from __future__ import annotations

from typing import Any

from comfy_saas.workflows import catalogue

Slot = tuple[str, str]  # (kind, input name): kind is "w" (a real input), "ctrl", "extra" or "forced"
AUDIO_UI_CLASSES = frozenset({"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus",
                              "SaveAudioAdvanced"})
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
_MEDIA_UPLOADS = ("image_upload", "video_upload", "animated_image_upload")


def _companions(name: str, entry: dict[str, Any]) -> list[Slot]:
    slots: list[Slot] = []
    if catalogue.has_control(name, entry):
        slots.append(("ctrl", name))
        if catalogue.kind(entry) == "COMBO":
            slots.append(("extra", "control_filter_list"))
    slots += [("extra", "remote")] * int(entry.get("remote") or 0)
    return slots


def _end_of_required(class_type: str, required: dict[str, Any], with_holes: bool) -> list[Slot]:
    slots: list[Slot] = []
    if class_type in AUDIO_UI_CLASSES and with_holes:
        slots.append(("extra", "audioUI"))  # serialize:false: older saves leave a null here
    uploads = {e.get("upload") for e in required.values()}
    if uploads & set(_MEDIA_UPLOADS) or "audio_upload" in uploads:
        slots.append(("extra", "upload"))
    return slots


def _layout(class_type: str, cls: dict[str, Any], with_forced: bool, with_holes: bool) -> list[Slot]:
    slots: list[Slot] = []
    for section in ("required", "optional"):
        entries = cls.get(section) or {}
        for name, entry in entries.items():
            if entry.get("force") and with_forced and catalogue.kind(entry) in catalogue.WIDGET_TYPES:
                slots += [("forced", name), *_companions(name, entry)]  # before frontend 1.16 they had a widget
            elif catalogue.is_widget(entry):
                slots += [("w", name), *_companions(name, entry)]
        if section == "required":
            slots += _end_of_required(class_type, entries, with_holes)
    return slots


def layouts(class_type: str, cls: dict[str, Any]) -> list[list[Slot]]:
    """Candidate layouts of widgets_values, the current frontend's first."""
    out: list[list[Slot]] = []
    for forced, holes in ((False, False), (False, True), (True, False), (True, True)):
        layout = _layout(class_type, cls, forced, holes)
        if layout not in out:
            out.append(layout)
    return out


def widget_names(cls: dict[str, Any]) -> list[str]:
    """The inputs that are widgets, in widget order."""
    return [name for name, entry in catalogue.inputs_of(cls).items() if catalogue.is_widget(entry)]


def widget_values(node: dict[str, Any], class_type: str, cls: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """({input: saved value} for the node's widgets, warnings). Named values win when the save has them."""
    names = widget_names(cls)
    named, saved = node.get("widgets_values_named"), node.get("widgets_values")
    if isinstance(named, dict):
        got = {n: named[n] for n in names if n in named}
        if got or not isinstance(saved, list):
            return got, []
    if isinstance(saved, dict):  # some custom nodes save a name-keyed dict
        return {n: saved[n] for n in names if n in saved}, []
    if not isinstance(saved, list):
        return {}, []
    return _positional(saved, class_type, cls, node.get("id"))


def _positional(saved: list[Any], class_type: str, cls: dict[str, Any], node_id: Any
                ) -> tuple[dict[str, Any], list[str]]:
    candidates = layouts(class_type, cls)
    layout = next((lay for lay in candidates if len(lay) == len(saved)), candidates[0])
    warnings = []
    if len(layout) != len(saved):  # extra trailing values are client-only widgets or a newer schema
        warnings.append(f"node {node_id} ({class_type}): {len(saved)} widget values, expected {len(layout)}")
    values = {}
    for (kind, name), value in zip(layout, saved, strict=False):
        if kind == "w":
            values[name] = value
        elif kind == "ctrl" and value not in CONTROL_VALUES and not isinstance(value, bool):
            warnings.append(f"node {node_id} ({class_type}): unexpected control value {value!r} after {name}")
    return values, warnings
