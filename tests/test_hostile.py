"""Hostile input through the real local server: every bad request gets a clean 4xx in the one error shape
(no 5xx, no plain text, no hang) and leaves nothing behind in the store. Unauthenticated bodies cost no
memory, however large."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ADMIN, ALICE, BOB, Server, free_port, peak_rss_kb, start_serve, wait_until

WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "h"}}}
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def wf(**nodes: Any) -> dict:
    """WF with some nodes replaced or added."""
    return {**WF, **nodes}


def save(prefix: Any) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}


def load(image: Any) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": image}}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def raw(text: str) -> dict:
    return {"data": text.encode(), "headers": {**ADMIN, "Content-Type": "application/json"}}


def js(body: dict) -> dict:
    return {"json": body}


def in_input(value: str) -> dict:
    """A raw body whose one node input is the JSON text `value`."""
    return raw('{"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"a": ' + value + "}}}}")


def in_override(value: str) -> dict:
    return raw('{"workflow": ' + json.dumps(WF) + ', "overrides": [{"node": "1", "input": "w", "value": '
               + value + "}]}")


SUBMISSIONS = {
    # JSON the parser must not choke on
    "nesting 300 deep": in_input(nested(300)),
    "nesting 100k deep": raw('{"metadata": ' + nested(100_000) + "}"),
    "nesting of objects": in_input('{"a": ' * 1000 + "1" + "}" * 1000),
    "nesting in an override": in_override(nested(500)),
    "NaN": in_input("NaN"),
    "Infinity": raw('{"workflow": ' + json.dumps(WF) + ', "metadata": {"x": Infinity}}'),
    "-Infinity": in_override("-Infinity"),
    "1e999": in_input("1e999"),
    "5000-digit number": in_input("9" * 5000),
    "not JSON": raw("{nope"),
    "not UTF-8": {"data": b'{"workflow": "\xff\xfe"}', "headers": {**ADMIN, "Content-Type": "application/json"}},
    "a JSON array": raw("[1, 2, 3]"),
    "empty body": raw(""),
    # URLs: odd ports, and addresses that reach inside through IPv6 transition forms
    **{f"media port {p}": js({"workflow": WF, "media": [{"name": "a.png", "url": f"http://example.com:{p}/a.png"}]})
       for p in ("99999", "abc", "-1", "0", "²", "65536")},
    **{f"webhook port {p}": js({"workflow": WF, "webhook_url": f"http://example.com:{p}/hook"})
       for p in ("99999", "abc", "-1")},
    **{f"media at {host}": js({"workflow": WF, "media": [{"name": "a.png", "url": f"http://{host}/a.png"}]})
       for host in ("[2002:7f00:1::]", "[2002:a9fe:a9fe::]", "[fec0::1]", "192.0.0.1", "192.0.0.9",
                    "[64:ff9b::7f00:1]", "[::127.0.0.1]", "[2001:0:7f00:1::1]", "[::ffff:169.254.169.254]")},
    "webhook at 6to4 metadata": js({"workflow": WF, "webhook_url": "http://[2002:a9fe:a9fe::]/latest"}),
    "URL with a newline": js({"workflow": WF, "webhook_url": "http://example.com/a\nb"}),
    # names that end in a newline, or are not names at all
    "pool with newline": js({"workflow": WF, "pool": "x\n"}),
    "pool with space": js({"workflow": WF, "pool": "x y"}),
    "empty pool": js({"workflow": WF, "pool": ""}),
    "user_id with newline": js({"workflow": WF, "user_id": "alice\n"}),
    "media name with newline": js({"workflow": WF, "media": [{"name": "a.png\n", "base64": PNG_B64}]}),
    "media name with slash": js({"workflow": WF, "media": [{"name": "a/b.png", "base64": PNG_B64}]}),
    "media name dot dot": js({"workflow": WF, "media": [{"name": "..", "base64": PNG_B64}]}),
    # node ids
    **{f"node id {nid!r}": js({"workflow": {nid: WF["1"], "2": {"class_type": "SaveImage", "inputs": {
        "images": [nid, 0], "filename_prefix": "x"}}}}) for nid in ("../x", "/abs", "", "a/b", "x\n", "n" * 200)},
    "override of node ../x": js({"workflow": WF, "overrides": [{"node": "../x", "input": "a", "value": 1}]}),
    # files outside the job's own: save prefixes, file inputs, annotations, also through overrides
    **{f"save prefix {p!r}": js({"workflow": wf(**{"2": save(p)})})
       for p in ("../../../../tmp/x", "/tmp/x", "a/../../x", "..", "./x", "a\\..\\x", "x\x00y", ["1", 0], 7)},
    **{f"LoadImage {name!r}": js({"workflow": wf(**{"3": load(name)})})
       for name in ("x.png [output]", "x.png [temp]", "x.png[output]", "../x.png", "/etc/passwd", "a/b.png",
                    "job/x.png [input]", "..", ["1", 0], "", " x.png")},
    "annotation on any input": js({"workflow": wf(**{"3": {"class_type": "SaveText", "inputs": {
        "text": "ComfyUI_00001_.png [output]", "filename_prefix": "t"}}})}),
    "override to an [output] file": js({"workflow": wf(**{"3": load("a.png")}), "overrides": [
        {"node": "3", "input": "image", "value": "ComfyUI_00001_.png [output]"}]}),
    "override to a climbing prefix": js({"workflow": WF, "overrides": [
        {"node": "2", "input": "filename_prefix", "value": "../../x"}]}),
}

QUERIES = ["limit=²", "cursor=²", "limit=" + "9" * 5000, "cursor=" + "9" * 5000, "limit=-1", "limit=0", "limit=101",
           "limit=1.5", "limit=%201", "cursor=-1", "cursor=0x10", "cursor=%D9%A3", "status=²", "status=done",
           "user_id=alice%0A", "user_id=" + "u" * 300]


def keys_of(server: Server) -> tuple[set, int]:
    """What the store holds (but the dispatchers' bookkeeping) and how many wake-ups are queued."""
    store = server.stack.services.store
    stored = set(store.d.keys())
    return {k for k in stored if not str(k).startswith("maint:")}, store.queue_depth()


def assert_clean_4xx(resp: requests.Response, status: int | None = None) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    if status is not None:
        assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers["content-type"]
    body = resp.json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]) <= {"type", "message", "field",
                                                                                    "details"}
    return body["error"]


@pytest.mark.parametrize("case", list(SUBMISSIONS), ids=lambda c: c.encode("unicode_escape").decode()[:60])
def test_hostile_submissions_get_a_clean_4xx_and_store_nothing(server: Server, case: str):
    before = keys_of(server)
    kwargs = dict(SUBMISSIONS[case])
    headers = kwargs.pop("headers", ADMIN)
    error = assert_clean_4xx(requests.post(server.base + "/v1/jobs", headers=headers, timeout=30, **kwargs))
    assert error.get("field"), error  # names what was wrong
    assert keys_of(server) == before
    assert not Path("/tmp/x").exists()


@pytest.mark.parametrize("query", QUERIES)
def test_hostile_list_queries_get_a_422_naming_the_parameter(server: Server, query: str):
    error = assert_clean_4xx(server.call("GET", f"/v1/jobs?{query}"), 422)
    assert error["field"] == query.split("=")[0]


@pytest.fixture(scope="module")
def idle_job(server: Server) -> str:
    """A job that stays queued (no worker serves pool "idle")."""
    return server.call("POST", "/v1/jobs", json={"workflow": WF, "pool": "idle"}).json()["id"]


@pytest.mark.parametrize("value", ["²", "-1", "1.5", "9" * 5000, "0x1", "1 2", "\u0661"])
def test_hostile_last_event_ids_get_a_422(server: Server, idle_job: str, value: str):
    job_id = idle_job
    header = {**ADMIN, "Last-Event-ID": value.encode()}
    assert_clean_4xx(server.call("GET", f"/v1/jobs/{job_id}/events", header), 422)
    assert_clean_4xx(server.call("GET", f"/v1/jobs/{job_id}/events?last_event_id={value}"), 422)


@pytest.mark.parametrize("query", ["expires=²&sig=a", "expires=" + "9" * 5000 + "&sig=a", "expires=1&sig=%C3%A9",
                                   "expires=99999999999&sig=" + "é" * 64, "expires=-5&sig=00", "", "sig=" + "a" * 64])
def test_hostile_file_links_get_a_404(server: Server, query: str):
    assert_clean_4xx(requests.get(f"{server.base}/files/jobs/x/out/1/a.png?{query}", timeout=10), 404)


def test_ids_are_never_echoed_at_length(server: Server):
    for job_id in ["a" * 10_000, "a" * 65, "x%0Ay", "é" * 30]:
        for method, path in [("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("GET", "/events")]:
            error = assert_clean_4xx(server.call(method, f"/v1/jobs/{job_id}{path}"), 404)
            assert len(error["message"]) < 100


def test_a_cursor_past_the_end_is_an_empty_last_page(server: Server):
    server.call("POST", "/v1/jobs", ALICE, json={"workflow": WF, "pool": "idle"})
    for cursor in ["999999999999999999", "1000000"]:
        page = server.call("GET", f"/v1/jobs?cursor={cursor}", ALICE).json()
        assert page == {"jobs": [], "next_cursor": None}
    assert server.call("GET", "/v1/jobs?limit=1", ALICE).json()["jobs"]  # an issued cursor still works


def test_cancelling_a_finished_job_is_a_conflict_naming_its_status(server: Server):
    job_id = server.call("POST", "/v1/jobs", BOB, json={"workflow": WF}).json()["id"]
    done = server.done(job_id, BOB)
    error = assert_clean_4xx(server.call("POST", f"/v1/jobs/{job_id}/cancel", BOB), 409)
    assert error["details"] == {"status": done["status"]} and done["status"] in error["message"]
    cancelled = server.call("POST", "/v1/jobs", BOB, json={"workflow": WF, "pool": "idle"}).json()["id"]
    assert server.call("DELETE", f"/v1/jobs/{cancelled}", BOB).json()["status"] == "cancelled"
    assert assert_clean_4xx(server.call("DELETE", f"/v1/jobs/{cancelled}", BOB), 409)["details"] == {
        "status": "cancelled"}


def test_an_empty_user_in_the_api_keys_is_refused_at_startup(tmp_path: Path):
    from comfy_saas.config import Settings

    for spec in ["admin-key, k:", ":alice", "k:al ice", "k:bob\nx"]:
        with pytest.raises(ValueError, match="COMFY_API_KEYS"):
            Settings.from_env({"COMFY_API_KEYS": spec, "COMFY_DATA_DIR": str(tmp_path)})
    proc, lines = start_serve(tmp_path / "data", free_port(), {"COMFY_API_KEYS": "admin-key, k:"})
    assert proc.wait(30) == 2 and "COMFY_API_KEYS" in "".join(lines) + proc.stdout.read()


def test_remote_callers_get_the_same_limits(server: Server):
    from comfy_saas.web import remote

    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    svc = server.stack.services
    for body in [{"workflow": WF, "metadata": {"x": deep}}, {"workflow": WF, "metadata": {"x": float("nan")}},
                 {"workflow": WF, "pool": "x\n"}]:
        assert remote.submit_job(svc, body)["error"]["status"] == 422
    for page in [{"limit": "²"}, {"limit": 10**30}, {"cursor": "²"}, {"limit": True}]:
        assert remote.list_jobs(svc, **page)["error"]["status"] == 422


# --- memory: a body is read only after its sender is authenticated ----------------------------------

BIG = 95 * 1024 * 1024


def post_big(port: int, answers: list[bytes], size: int = BIG) -> None:
    """POST `size` bytes of blanks without a key, sending until the server answers (or all is sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        chunk, sent, answer = b" " * (1024 * 1024), 0, b""
        sock.setblocking(False)
        while sent < size and not answer:
            try:
                sent += sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the server closed its side: it had answered already
                break
            with contextlib.suppress(BlockingIOError):
                answer = sock.recv(65536)
        sock.settimeout(30)
        try:
            while part := sock.recv(65536):
                answer += part
        except OSError:
            pass
        answers.append(answer)


def test_unauthenticated_big_bodies_do_not_raise_peak_memory(tmp_path: Path):
    port = free_port()
    proc, _ = start_serve(tmp_path / "data", port, {"COMFY_API_KEYS": "admin-key"})
    try:
        base = f"http://127.0.0.1:{port}"
        assert requests.post(f"{base}/v1/jobs", json={"workflow": WF}, timeout=10).status_code == 401  # warm up
        before = peak_rss_kb(proc.pid)
        answers: list[bytes] = []
        senders = [threading.Thread(target=post_big, args=(port, answers)) for _ in range(6)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        assert len(answers) == 6 and all(a.startswith(b"HTTP/1.1 401") for a in answers), answers
        assert all(b'"type":"unauthorized"' in a for a in answers)
        grew_mb = (peak_rss_kb(proc.pid) - before) / 1024
        assert grew_mb < 60, f"peak RSS grew by {grew_mb:.0f} MB"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def resident_kb(pid: int) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1])


def test_big_bodies_are_not_held_once_answered(tmp_path: Path):
    """On a server without keys every body is read; once refused, its memory goes back."""
    port = free_port()
    proc, _ = start_serve(tmp_path / "data", port)
    try:
        before = resident_kb(proc.pid)
        answers: list[bytes] = []
        senders = [threading.Thread(target=post_big, args=(port, answers, 40 * 1024 * 1024)) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        assert len(answers) == 4 and all(a.startswith(b"HTTP/1.1 400") for a in answers), answers
        # The answer can reach the client before the server's handler has let go of the body: poll for it.
        wait_until(lambda: resident_kb(proc.pid) - before < 60 * 1024, 20, "the bodies' memory to be given back")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


class Blanks:
    """`size` bytes of blanks for requests to stream with a Content-Length, never held whole."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        chunk = b" " * (1024 * 1024)
        for start in range(0, self.size, len(chunk)):
            yield chunk[:self.size - start]


def test_a_client_that_sends_its_whole_body_first_still_reads_its_401(tmp_path: Path):
    """requests (like urllib) reads the answer only once it has sent everything: the server answers, then
    reads and drops the rest of the body before it closes, instead of resetting the connection."""
    port = free_port()
    proc, _ = start_serve(tmp_path / "data", port, {"COMFY_API_KEYS": "admin-key"})
    try:
        base = f"http://127.0.0.1:{port}"
        assert requests.post(f"{base}/v1/jobs", json={"workflow": WF}, timeout=10).status_code == 401  # warm up
        before = peak_rss_kb(proc.pid)
        answer = requests.post(f"{base}/v1/jobs", data=Blanks(BIG), headers={"Content-Type": "application/json"},
                               timeout=60)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "unauthorized"
        sent = urllib.request.Request(f"{base}/v1/jobs", data=iter(Blanks(BIG)), method="POST",
                                      headers={"Content-Type": "application/json", "Content-Length": str(BIG)})
        with pytest.raises(urllib.error.HTTPError) as refused:  # not a reset connection
            urllib.request.urlopen(sent, timeout=60)
        assert refused.value.code == 401 and json.loads(refused.value.read())["error"]["type"] == "unauthorized"
        grew_mb = (peak_rss_kb(proc.pid) - before) / 1024
        assert grew_mb < 20, f"peak RSS grew by {grew_mb:.0f} MB"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
