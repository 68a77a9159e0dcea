"""Seeds drawn for -1/"random", and template inputs (declared or from titles) typed by the catalogue: pure."""

from __future__ import annotations

import random

import pytest
from ui_graphs import DOUBLE_NODES

from comfy_saas.errors import InvalidInput
from comfy_saas.workflows import input_values, inputs, seeds

NOISE = {"1": {"class_type": "NoiseImage", "inputs": {"width": -1, "height": 8, "seed": -1}},
         "2": {"class_type": "NoiseImage", "inputs": {"width": 8, "height": 8, "seed": "random"}},
         "3": {"class_type": "NoiseImage", "inputs": {"width": 8, "height": 8, "seed": 5}},
         "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def test_seed_like_inputs_given_minus_one_or_random_are_drawn_and_recorded():
    workflow = {k: {**v, "inputs": dict(v["inputs"])} for k, v in NOISE.items()}
    overrides = [{"node": "3", "input": "seed", "value": -1}]
    drawn = seeds.draw(workflow, overrides, DOUBLE_NODES, random.Random(1))
    assert [(d["node"], d["input"]) for d in drawn] == [("1", "seed"), ("2", "seed"), ("3", "seed")]
    assert all(0 <= d["value"] < seeds.SEED_CAP for d in drawn)
    assert workflow["1"]["inputs"]["width"] == -1  # not seed-like: left for ComfyUI to judge
    assert workflow["3"]["inputs"]["seed"] == 5 and overrides[0]["value"] == drawn[2]["value"]


def test_the_same_idempotency_key_draws_the_same_seeds():
    a, b = (seeds.submission_rng("u", "key-1").randint(0, 2**50) for _ in range(2))
    assert a == b != seeds.submission_rng("u", "key-2").randint(0, 2**50)


def test_one_seed_input_with_several_targets_draws_once():
    spec = inputs.declared({"seed": {"targets": [{"node": "2", "input": "seed"}, {"node": "3", "input": "seed"}]}})
    typed = inputs.resolve(spec, NOISE, DOUBLE_NODES)
    overrides, media, drawn = input_values.to_overrides({"seed": "random"}, typed, random.Random(2))
    assert media == [] and len({o["value"] for o in overrides}) == 1 and len(drawn) == 2


def test_title_tokens_name_inputs_and_ambiguity_is_refused():
    titled = {**NOISE, "1": {**NOISE["1"], "_meta": {"title": "noise $size=width $seed"}}}
    spec = inputs.from_titles(titled, {}, DOUBLE_NODES)
    assert spec == {"size": {"targets": [["1", "width"]]}, "seed": {"targets": [["1", "seed"]]}}
    vague = {**NOISE, "1": {**NOISE["1"], "_meta": {"title": "$anything"}}}
    with pytest.raises(InvalidInput, match=r"\$anything=INPUT"):
        inputs.from_titles(vague, {}, DOUBLE_NODES)


@pytest.mark.parametrize(("declared", "field"), [
    ({"1bad": {"node": "1", "input": "width"}}, "inputs.1bad"),
    ({"x": {"node": "1"}}, "inputs.x"),
    ({"x": {"node": "9", "input": "width"}}, "inputs.x"),
    ({"x": {"node": "4", "input": "images"}}, "inputs.x"),  # a link, not a value
])
def test_bad_declarations_name_the_input(declared: dict, field: str):
    with pytest.raises(InvalidInput) as info:
        inputs.resolve(inputs.declared(declared), NOISE, DOUBLE_NODES)
    assert info.value.field == field


def test_media_inputs_take_urls_data_urls_or_media_names():
    assert input_values.media_item("image", "https://example.com/a/cat%20x.png?s=1") == (
        "input-image-cat_20x.png", {"name": "input-image-cat_20x.png", "url": "https://example.com/a/cat%20x.png?s=1"})
    name, item = input_values.media_item("image", "data:image/png;base64,AAAA")
    assert name == "input-image.png" and item["base64"].startswith("data:image/png")
    assert input_values.media_item("image", "uploaded.png") == ("uploaded.png", None)
