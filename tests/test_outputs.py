"""Collecting every output from a ComfyUI history entry, under names that cannot escape the job's folder."""

from __future__ import annotations

from datetime import UTC, datetime

from comfy_saas.jobs import keys
from comfy_saas.runner.outputs import collect, stable_name

HISTORY_OUTPUTS = {
    "9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
                     {"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}]},
    "10": {"gifs": [{"filename": "clip_00001.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]},
    "11": {"audio": [{"filename": "tone_00001_.flac", "subfolder": "audio", "type": "output"}]},
    "12": {"text": ["a caption"]},
    "13": {"meshes": [{"filename": "thing_00001_.glb", "subfolder": "3d", "type": "output"}], "animated": [True]},
    "14": {"images": [{"filename": "../../etc/passwd", "subfolder": "../..", "type": "output"}]},
}


def test_every_kind_of_output_is_collected_and_previews_only_on_request():
    items = collect(HISTORY_OUTPUTS)
    assert [(i.node_id, i.kind) for i in items] == [("9", "image"), ("10", "video"), ("11", "audio"),
                                                   ("12", "text"), ("13", "file"), ("14", "image")]
    assert items[3].text == "a caption" and items[1].content_type == "video/h264-mp4"
    with_previews = collect(HISTORY_OUTPUTS, include_temp=True)
    assert [i.name for i in with_previews if i.node_id == "9"] == ["ComfyUI_0.png", "ComfyUI_temp_abcde_1.png"]


def test_names_are_stable_across_attempts_and_never_escape():
    assert stable_name("ComfyUI_00001_.png", 0) == stable_name("ComfyUI_00042_.png", 0) == "ComfyUI_0.png"
    for item in collect(HISTORY_OUTPUTS):
        key = keys.output("job", datetime(2026, 11, 29, tzinfo=UTC), item.node_id, item.name)
        assert ".." not in key.split("/") and not key.startswith("/") and key.count("/") == 5
