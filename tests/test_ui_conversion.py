"""UI-format workflows are converted at submit the way ComfyUI's frontend queues them: one hand-made graph per
rule, converted with the double's catalogue (and the real 0.3.64 one where the double lacks a node), and one
graph with every rule run to completion through the local stack on the double."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from conftest import Server, wait_until
from PIL import Image
from ui_graphs import DOUBLE_NODES, UI

from comfy_saas.errors import UnconvertibleWorkflow
from comfy_saas.workflows import preflight
from comfy_saas.workflows.convert import convert

REAL_NODES = preflight.compact(json.loads((Path(__file__).parent / "fixtures" / "comfyui" /
                                           "object_info_full.json").read_text()))
SUB_ID = "5a1b0c3e-0000-4000-8000-000000000001"
NESTED_ID = "5a1b0c3e-0000-4000-8000-000000000002"
IMG = [("image", "IMAGE")]
OUT = [("IMAGE", "IMAGE")]


def converted(ui: UI, nodes: dict = DOUBLE_NODES, subgraphs: list | None = None) -> dict:
    return convert(ui.workflow(subgraphs), nodes, rng=random.Random(0)).prompt


def save(ui: UI, node_id: int, prefix: str) -> None:
    ui.add(node_id, "SaveImage", [prefix], ins=[("images", "IMAGE")])


def test_widget_values_follow_input_order_skipping_control_after_generate():
    ui = UI()
    ui.add(1, "NoiseImage", [32, 24, 7, "randomize"], outs=OUT)
    ui.add(2, "SlowPassthrough", [3, 0.5, False, True, 11, "fixed"], ins=IMG, outs=OUT)  # seed: by its name
    save(ui, 3, "p")
    ui.connect(1, 0, 2, "image")
    ui.connect(2, 0, 3, "images")
    prompt = converted(ui)
    assert prompt["1"] == {"inputs": {"width": 32, "height": 24, "seed": 7}, "class_type": "NoiseImage",
                           "_meta": {"title": "NoiseImage"}}
    assert prompt["2"]["inputs"] == {"steps": 3, "delay": 0.5, "send_preview": False, "send_text": True, "seed": 11,
                                     "image": ["1", 0]}
    assert prompt["3"]["inputs"] == {"filename_prefix": "p", "images": ["2", 0]}


def test_a_widget_converted_to_an_input_takes_its_link():
    ui = UI()
    ui.add(1, "PrimitiveInt", [5, "fixed"], outs=[("INT", "INT")])
    ui.add(2, "EmptyLatentImage", [512, 512, 1], outs=[("LATENT", "LATENT")], widget_ins=[("width", "INT")])
    ui.connect(1, 0, 2, "width", "INT")
    prompt = converted(ui, REAL_NODES)
    assert prompt["2"]["inputs"] == {"height": 512, "batch_size": 1, "width": ["1", 0]}


def test_primitive_node_values_reach_every_target():
    ui = UI()
    ui.add(1, "PrimitiveNode", [99, "fixed"], outs=[("INT", "INT")], title="$seed")
    ui.node(1)["outputs"][0]["widget"] = {"name": "seed"}
    for node_id in (2, 3):
        ui.add(node_id, "NoiseImage", [8, 8, 0, "fixed"], outs=OUT, widget_ins=[("seed", "INT")])
        ui.connect(1, 0, node_id, "seed", "INT")
    conversion = convert(ui.workflow(), DOUBLE_NODES)
    assert "1" not in conversion.prompt
    assert conversion.prompt["2"]["inputs"]["seed"] == conversion.prompt["3"]["inputs"]["seed"] == 99
    assert conversion.primitives["1"] == {"title": "$seed", "targets": [["2", "seed"], ["3", "seed"]]}


def test_reroutes_pass_through():
    ui = UI()
    ui.add(1, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    ui.add(2, "Reroute", ins=[("", "*")], outs=[("", "IMAGE")])
    ui.add(3, "Reroute", ins=[("", "*")], outs=[("", "IMAGE")])
    save(ui, 4, "r")
    ui.connect(1, 0, 2, "")
    ui.connect(2, 0, 3, "")
    ui.connect(3, 0, 4, "images")
    assert converted(ui)["4"]["inputs"]["images"] == ["1", 0] and set(converted(ui)) == {"1", "4"}


def test_muted_nodes_are_dropped_with_what_only_they_fed():
    ui = UI()
    ui.add(1, "EmptyImage", [8, 8, 1, 0], outs=OUT, mode=2)
    ui.add(2, "ImageInvert", ins=IMG, outs=OUT)
    save(ui, 3, "muted")
    ui.add(4, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    save(ui, 5, "kept")
    ui.connect(1, 0, 2, "image")
    ui.connect(2, 0, 3, "images")
    ui.connect(4, 0, 5, "images")
    assert set(converted(ui)) == {"4", "5"}


def test_bypassed_nodes_pass_their_matching_input_through():
    ui = UI()
    ui.add(1, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    ui.add(2, "ImageBlur", [3, 1.0], ins=IMG, outs=OUT, mode=4)
    ui.add(3, "ImageInvert", ins=IMG, outs=OUT, mode=4)
    save(ui, 4, "b")
    ui.connect(1, 0, 2, "image")
    ui.connect(2, 0, 3, "image")
    ui.connect(3, 0, 4, "images")
    prompt = converted(ui)
    assert set(prompt) == {"1", "4"} and prompt["4"]["inputs"]["images"] == ["1", 0]


def test_notes_markdown_notes_and_groups_are_ignored():
    ui = UI()
    ui.add(1, "Note", ["remember this"])
    ui.add(2, "MarkdownNote", ["# title"])
    ui.add(3, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    save(ui, 4, "n")
    ui.connect(3, 0, 4, "images")
    assert set(converted(ui)) == {"3", "4"}


def inner_graph(def_id: str = SUB_ID) -> dict:
    """A subgraph: image -> ImageScale (width promoted from the boundary) -> ImageInvert -> output."""
    sub = UI()
    sub.add(1, "ImageScale", ["nearest-exact", 8, 6, "disabled"], ins=IMG, outs=OUT, widget_ins=[("width", "INT")])
    sub.add(2, "ImageInvert", ins=IMG, outs=OUT)
    image, width = sub.connect(-10, 0, 1, "image", object_form=True), sub.connect(-10, 1, 1, "width", "INT", True)
    sub.connect(1, 0, 2, "image", object_form=True)
    out = sub.connect(2, 0, -20, "0", object_form=True)
    return sub.definition(def_id, "scale and invert", [{"name": "image", "type": "IMAGE", "linkIds": [image]},
                                                       {"name": "width", "type": "INT", "linkIds": [width]}],
                          [{"name": "IMAGE", "type": "IMAGE", "linkIds": [out]}])


def test_subgraphs_are_flattened_with_the_instance_values():
    ui = UI()
    ui.add(1, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    ui.add(5, SUB_ID, [10], ins=IMG, outs=OUT)
    save(ui, 6, "s")
    ui.connect(1, 0, 5, "image")
    ui.connect(5, 0, 6, "images")
    prompt = converted(ui, subgraphs=[inner_graph()])
    assert set(prompt) == {"1", "5:1", "5:2", "6"}
    assert prompt["5:1"]["inputs"] == {"upscale_method": "nearest-exact", "width": 10, "height": 6,
                                       "crop": "disabled", "image": ["1", 0]}
    assert prompt["5:2"]["inputs"] == {"image": ["5:1", 0]} and prompt["6"]["inputs"]["images"] == ["5:2", 0]


def test_nested_subgraphs_get_path_ids_and_muted_instances_do_not_run():
    outer = UI()
    outer.add(7, SUB_ID, [], ins=IMG, outs=OUT)  # no host values: the inner widgets keep theirs
    image = outer.connect(-10, 0, 7, "image", object_form=True)
    out = outer.connect(7, 0, -20, "0", object_form=True)
    nested = outer.definition(NESTED_ID, "outer", [{"name": "image", "type": "IMAGE", "linkIds": [image]}],
                              [{"name": "IMAGE", "type": "IMAGE", "linkIds": [out]}])
    ui = UI()
    ui.add(1, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    ui.add(2, NESTED_ID, [], ins=IMG, outs=OUT)
    ui.add(3, NESTED_ID, [], ins=IMG, outs=OUT, mode=2)
    save(ui, 4, "nested")
    save(ui, 5, "muted")
    for instance, target in ((2, 4), (3, 5)):
        ui.connect(1, 0, instance, "image")
        ui.connect(instance, 0, target, "images")
    prompt = converted(ui, subgraphs=[inner_graph(), nested])
    assert set(prompt) == {"1", "2:7:1", "2:7:2", "4"}
    assert prompt["2:7:1"]["inputs"]["width"] == 8 and prompt["4"]["inputs"]["images"] == ["2:7:2", 0]


def test_unknown_node_types_are_refused_naming_them():
    ui = UI()
    ui.add(1, "NoiseImage", [8, 8, 1, "fixed"], outs=OUT)
    ui.add(2, "FancyUpscaler", ["x"], ins=IMG, outs=OUT)
    ui.add(3, "OtherCustomNode", [], mode=2)  # muted: never sent, so never asked for
    with pytest.raises(UnconvertibleWorkflow) as info:
        converted(ui)
    assert "FancyUpscaler" in info.value.message and "OtherCustomNode" not in info.value.message
    assert info.value.to_dict()["details"][0]["node_id"] == "2"


def test_dynamic_prompts_and_save_name_replacements_like_the_frontend():
    ui = UI()
    ui.add(1, "CLIPTextEncode", ["a {red|red} car // comment"], ins=[("clip", "CLIP")],
           outs=[("CONDITIONING", "CONDITIONING")])
    ui.add(2, "EmptyLatentImage", [640, 512, 1], outs=[("LATENT", "LATENT")])
    ui.add(3, "SaveImage", ["%date:yyyy-MM-dd%/w%EmptyLatentImage.width%"], ins=[("images", "IMAGE")])
    prompt = convert(ui.workflow(), REAL_NODES, now=datetime(2025, 1, 2, tzinfo=UTC)).prompt
    assert prompt["1"]["inputs"]["text"] == "a red car "
    assert prompt["3"]["inputs"]["filename_prefix"] == "2025-01-02/w640"


def all_rules() -> dict:
    """Every rule at once, on the double's nodes."""
    ui = UI()
    ui.add(1, "NoiseImage", [32, 24, 7, "randomize"], outs=OUT)
    ui.add(2, "PrimitiveNode", [99, "fixed"], outs=[("INT", "INT")])
    ui.node(2)["outputs"][0]["widget"] = {"name": "seed"}
    ui.add(3, "NoiseImage", [16, 16, 0, "fixed"], outs=OUT, widget_ins=[("seed", "INT")])
    ui.connect(2, 0, 3, "seed", "INT")
    ui.add(4, "Reroute", ins=[("", "*")], outs=[("", "IMAGE")])
    ui.add(5, "ImageInvert", ins=IMG, outs=OUT, mode=4)
    save(ui, 6, "rules_bypass")
    ui.connect(1, 0, 4, "")
    ui.connect(4, 0, 5, "image")
    ui.connect(5, 0, 6, "images")
    ui.add(7, "EmptyImage", [8, 8, 1, 0], outs=OUT, mode=2)
    ui.add(8, "ImageInvert", ins=IMG, outs=OUT)
    save(ui, 9, "rules_muted")
    ui.connect(7, 0, 8, "image")
    ui.connect(8, 0, 9, "images")
    ui.add(10, "Note", ["notes are ignored"])
    ui.add(11, "MarkdownNote", ["so are *markdown* notes"])
    ui.add(12, SUB_ID, [10], ins=IMG, outs=OUT)
    save(ui, 13, "rules_subgraph")
    ui.connect(3, 0, 12, "image")
    ui.connect(12, 0, 13, "images")
    return ui.workflow([inner_graph()])


def test_a_graph_with_every_rule_runs_to_completion_on_the_double(server: Server):
    wait_until(lambda: server.stack.services.store.object_info() is not None, 30, "the catalogue")
    created = server.call("POST", "/v1/jobs", json={"workflow": all_rules()})
    assert created.status_code == 201, created.text
    job = server.done(created.json()["id"])
    assert job["status"] == "completed" and job["workflow_format"] == "ui", job
    sizes = {o["node_id"]: Image.open(io.BytesIO(requests.get(o["url"], timeout=10).content)).size
             for o in job["outputs"]}
    assert sizes == {"6": (32, 24), "13": (10, 6)}
    ran = server.call("GET", f"/v1/jobs/{job['id']}?include=workflow").json()["workflow"]
    assert set(ran) == {"1", "3", "6", "12:1", "12:2", "13"}
    assert ran["3"]["inputs"]["seed"] == 99 and ran["6"]["inputs"]["images"] == ["1", 0]


def test_a_ui_workflow_with_unknown_nodes_gets_a_422_naming_them(server: Server):
    wait_until(lambda: server.stack.services.store.object_info() is not None, 30, "the catalogue")
    ui = UI()
    ui.add(1, "KSampler", [0, "fixed", 20, 8, "euler", "normal", 1], outs=[("LATENT", "LATENT")])
    resp = server.call("POST", "/v1/jobs", json={"workflow": ui.workflow()})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["type"] == "unconvertible_workflow" and "KSampler" in error["message"]
    assert error["field"] == "workflow" and error["details"][0]["node_id"] == "1"


def test_without_a_catalogue_a_ui_workflow_is_refused_for_now(svc):
    from comfy_saas.errors import CatalogueUnavailable
    from comfy_saas.jobs.operations import Caller, submit_job

    with pytest.raises(CatalogueUnavailable):
        submit_job(svc, Caller("k"), {"workflow": all_rules()})
    assert svc.store.list_jobs().jobs == []
