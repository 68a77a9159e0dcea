"""The ComfyUI double against the real server's transcripts: replay their requests, compare what comes back."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from comfy_saas.runner.comfy_client import ComfyClient, Event

TRANSCRIPTS = Path(__file__).resolve().parent / "fixtures" / "comfyui"  # recorded from ComfyUI 0.3.64


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRANSCRIPTS / f"{name}.jsonl").read_text().splitlines()]


def expected_runs(entries: list[dict]) -> list[tuple[dict, list[tuple[str, Any]]]]:
    """Each accepted POST /prompt with the main socket's messages for that prompt (text types and binary kinds)."""
    main = next(e["conn"] for e in entries if e["kind"] == "ws_open")
    runs: list[tuple[dict, list]] = []
    for e in entries:
        if e["kind"] == "http" and e["method"] == "POST" and e["path"] == "/prompt" and e["status"] == 200:
            runs.append((json.loads(e["request_body"]), []))
        elif runs and e.get("conn", "").startswith(main) and e["kind"] in {"ws_text", "ws_binary"}:
            runs[-1][1].append(_shape_of_recorded(e))
    return [(body, _until_done(msgs)) for body, msgs in runs]


def _shape_of_recorded(e: dict) -> tuple[str, Any]:
    if e["kind"] == "ws_binary":
        return "binary", e["event_type_u32be"]
    msg = json.loads(e["raw"])
    return msg["type"], sorted(msg["data"])


def _until_done(msgs: list) -> list:
    # Keep what belongs to the prompt: up to its `executing` null marker; `status` counts depend on other sockets.
    out = []
    for m in msgs:
        if m[0] != "status":
            out.append(m)
        if m == ("executing", ["node", "prompt_id"]) and len(out) > 3:
            break
    return _squash(out)


def _squash(msgs: list) -> list:
    """Collapse repeated progress_state lines: their count depends on scheduling, not protocol."""
    out: list = []
    for m in msgs:
        if not (out and m[0] == "progress_state" and out[-1][0] == "progress_state"):
            out.append(m)
    return out


def replay(url: str, body: dict, flags: bool) -> list:
    client = ComfyClient(url)
    stream = client.events()
    stream.open() if flags else _open_without_flags(stream)
    body = {**body, "client_id": stream.client_id}
    req = urllib.request.Request(url + "/prompt", json.dumps(body).encode(), {"Content-Type": "application/json"})
    prompt_id = json.loads(urllib.request.urlopen(req, timeout=10).read())["prompt_id"]
    seen: list = []
    while True:
        event = stream.next(10)
        assert event is not None, f"no end marker for {prompt_id}; got {seen}"
        seen.append(_shape_of_live(event))
        if event.type == "executing" and event.data.get("node") is None and event.prompt_id == prompt_id:
            break
    stream.close()
    return _squash([m for m in seen if m[0] not in {"status", "feature_flags"}])


def _open_without_flags(stream: Any) -> None:
    import websocket

    stream._ws = websocket.create_connection(stream.url, timeout=5)


def _shape_of_live(event: Event) -> tuple[str, Any]:
    if event.type == "preview":
        return "binary", 4 if "prompt_id" in event.data else 1
    if event.type == "progress_text":
        return "binary", 3
    return event.type, sorted(event.data)


@pytest.mark.parametrize("scenario", ["s01_a_empty_save", "s02_b_chain", "s05_e_exec_error", "s07_g_cached",
                                      "s09_binary_frames"])
def test_replayed_prompts_produce_the_recorded_messages(double, scenario: str):
    entries = load(scenario)
    flags = any(e["kind"] == "ws_send" and "feature_flags" in e["raw"] for e in entries)
    if scenario == "s09_binary_frames":  # its first prompt found node 1 cached by an earlier scenario
        replay(double.url, {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {
            "width": 32, "height": 32, "batch_size": 1, "color": 255}}, "2": {"class_type": "SaveImage", "inputs": {
                "images": ["1", 0], "filename_prefix": "warm"}}}}, flags)
    runs = expected_runs(entries)
    if scenario == "s09_binary_frames":
        runs = runs[:1]  # the second prompt is for the legacy (no feature flags) socket
    for body, expected in runs:
        assert replay(double.url, body, flags) == expected


def test_rejected_prompts_get_the_recorded_400_bodies(double):
    for e in load("s04_d_invalid"):
        if e["kind"] != "http" or e["path"] != "/prompt":
            continue
        req = urllib.request.Request(double.url + "/prompt", e["request_body"].encode(),
                                     {"Content-Type": "application/json"})
        try:
            status, body = 200, json.loads(urllib.request.urlopen(req, timeout=10).read())
        except urllib.error.HTTPError as err:
            status, body = err.code, json.loads(err.read())
        recorded = json.loads(e["response_body"])
        assert status == e["status"]
        assert body["error"]["type"] == recorded["error"]["type"]
        assert body["error"]["message"] == recorded["error"]["message"]
        assert _error_types(body) == _error_types(recorded)


def _error_types(body: dict) -> dict:
    return {nid: (n["class_type"], sorted(x["type"] for x in n["errors"]), n["dependent_outputs"])
            for nid, n in body.get("node_errors", {}).items()}


def test_binary_preview_frames_have_the_recorded_header_layout(double):
    recorded = (TRANSCRIPTS / "binary" / "s09_binary_frames_001.bin").read_bytes()
    assert recorded[:4] == b"\x00\x00\x00\x04"
    meta_len = int.from_bytes(recorded[4:8], "big")
    recorded_keys = sorted(json.loads(recorded[8:8 + meta_len]))
    from comfy_saas.runner.comfy_client import parse_binary

    assert sorted(k for k in parse_binary(recorded).data if k != "bytes") == recorded_keys


@pytest.mark.parametrize("scenario", ["s01_a_empty_save", "s02_b_chain", "s03_c_upload_load", "s07_g_cached"])
def test_recorded_executed_messages_announce_what_the_history_lists(scenario: str):
    """The worker stores outputs as `executed` announces them and ends a job on `execution_success` without
    reading /history: in every recorded prompt the announced outputs are the history entry's, cached ones too,
    and the end comes after the last of them."""
    announced: dict[str, dict] = {}
    listed: dict[str, dict] = {}
    ended_after: set[str] = set()
    for e in load(scenario):
        if e["kind"] == "ws_text":
            msg = json.loads(e["raw"])
            data = msg.get("data") or {}
            if msg.get("type") == "executed":
                announced.setdefault(data["prompt_id"], {})[data["node"]] = data["output"]
            elif msg.get("type") == "execution_success" and data.get("prompt_id") in announced:
                ended_after.add(data["prompt_id"])
        elif e["kind"] == "http" and "/history/" in str(e.get("path")) and e.get("response_body"):
            for prompt_id, entry in json.loads(e["response_body"]).items():
                listed[prompt_id] = entry["outputs"]
    assert announced and set(announced) <= set(listed) and ended_after == set(announced)
    assert all(announced[p] == listed[p] for p in announced)


def test_preview_frames_keep_their_image():
    recorded = (TRANSCRIPTS / "binary" / "s09_binary_frames_001.bin").read_bytes()
    from comfy_saas.runner.comfy_client import parse_binary

    event = parse_binary(recorded)
    meta_len = int.from_bytes(recorded[4:8], "big")
    assert event.image == recorded[8 + meta_len:] and event.image_format in {"jpeg", "png"}
    legacy = parse_binary(b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x89PNG...")
    assert legacy.image == b"\x89PNG..." and legacy.image_format == "png"
