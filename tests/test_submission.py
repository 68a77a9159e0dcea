"""Submissions are validated at the edge: every rejection names its field, and nothing is stored."""

from __future__ import annotations

import base64
import json

import pytest

from comfy_saas.config import Limits
from comfy_saas.errors import InvalidInput
from comfy_saas.jobs.request import parse_submission

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}
UI_EXPORT = {"last_node_id": 0, "nodes": [], "links": [], "version": 0.4}  # UI format, nothing to convert
SMALL = Limits(max_media_bytes=1_000, max_media_total_bytes=1_500, max_media_items=3)


def body(**extra) -> dict:
    return {"workflow": WORKFLOW, **extra}


def rejection(raw, limits: Limits | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_submission(raw, limits)
    return info.value


def test_a_valid_submission_parses_with_defaults():
    req = parse_submission(json.dumps(body(media=[{"name": "in.png", "url": "https://example.com/a.png"}])))
    assert req.workflow == WORKFLOW and req.media[0].name == "in.png" and req.overrides == []


@pytest.mark.parametrize(("raw", "field", "words"), [
    (b"{not json", "body", "not valid JSON"),
    (b"[1, 2]", "body", "JSON object"),
    (json.dumps({}), "workflow", "Field required"),
    (json.dumps(body(workflow={})), "workflow", "is empty"),
    (json.dumps(body(workflow=UI_EXPORT)), "workflow", "UI-format"),
    (json.dumps(body(workflow={"prompt": WORKFLOW})), "workflow", "/prompt request body"),
    (json.dumps(body(workflow={"1": {"inputs": {}}})), "workflow", "class_type"),
    (json.dumps(body(media=[{"name": "a.png", "url": "file:///etc/passwd"}])), "media[0].url", "scheme"),
    (json.dumps(body(media=[{"name": "a.png", "url": "ftp://host/a.png"}])), "media[0].url", "scheme"),
    (json.dumps(body(media=[{"name": "../a.png", "url": "https://h/a"}])), "media[0].name", "plain file name"),
    (json.dumps(body(media=[{"name": "a.png"}])), "media[0]", "exactly one of url or base64"),
    (json.dumps(body(media=[{"name": "a.png", "base64": "!!notbase64!!"}])), "media[0].base64", "base64"),
    (json.dumps(body(webhook_url="javascript:alert(1)")), "webhook_url", "scheme"),
    (json.dumps(body(webhook_url="https://h/" + "x" * 3000)), "webhook_url", "longer than"),
    (json.dumps(body(overrides=[{"node": "9", "input": "seed", "value": 1}])), "body", "no node '9'"),
    (json.dumps(body(user_id="has spaces")), "user_id", "letters, digits"),
    (json.dumps(body(pool="x" * 65)), "pool", "1-64"),
    (json.dumps(body(idempotency_key="k" * 256)), "idempotency_key", "at most 255"),
    (json.dumps(body(metadata={f"k{i}": i for i in range(40)})), "metadata", "limit is 32"),
    (json.dumps(body(timeout_s=10**9)), "timeout_s", "at most"),
    (json.dumps(body(surprise=1)), "surprise", "not a known field"),
])
def test_bad_input_names_the_field(raw, field, words):
    err = rejection(raw)
    assert err.field == field
    assert words in err.message


def test_oversize_base64_is_refused_by_size():
    too_big = base64.b64encode(b"x" * 1_200).decode()
    err = rejection(body(media=[{"name": "a.png", "base64": too_big}]), SMALL)
    assert err.field == "media[0].base64" and "1000 byte limit" in err.message


def test_media_caps_on_count_and_total_size():
    item = base64.b64encode(b"x" * 800).decode()
    err = rejection(body(media=[{"name": f"{i}.png", "base64": item} for i in range(2)]), SMALL)
    assert err.field == "media" and "limit is 1500" in err.message
    err = rejection(body(media=[{"name": f"{i}.png", "url": "https://h/x"} for i in range(4)]), SMALL)
    assert err.field == "media" and "limit is 3" in err.message


def test_data_urls_are_accepted_as_base64():
    data = "data:image/png;base64," + base64.b64encode(b"\x89PNG....").decode()
    req = parse_submission(body(media=[{"name": "a.png", "base64": data}]))
    assert req.media[0].decoded() == b"\x89PNG...."


def test_nothing_is_stored_for_a_rejected_submission(svc, db_path):
    from comfy_saas.backends.twins import LocalDict, LocalQueue
    from comfy_saas.jobs.operations import Caller, submit_job

    for raw in (b"{oops", json.dumps(body(workflow=UI_EXPORT)), json.dumps(body(workflow={}))):
        with pytest.raises(InvalidInput):
            submit_job(svc, Caller("k"), raw)
    assert LocalDict(db_path).len() == 0
    assert LocalQueue(db_path).len(total=True) == 0
