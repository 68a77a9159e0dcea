"""The API through the real local HTTP server (uvicorn on a free port, requests over TCP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from conftest import ADMIN, ALICE, BOB, Server, running_server

from comfy_saas.config import Limits

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "api"}}}


def assert_error_shape(resp: requests.Response, status: int, kind: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    allowed = {"type", "message", "field", "details"}
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]) <= allowed
    if kind:
        assert body["error"]["type"] == kind
    return body["error"]


def test_submit_poll_and_download(server: Server):
    created = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW})
    assert created.status_code == 201 and created.json()["status"] == "queued"
    job = server.done(created.json()["id"])
    assert job["status"] == "completed" and "claim_seq" not in job
    image = requests.get(job["outputs"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tampered_or_expired_file_link_is_refused(server: Server):
    job = server.done(server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW}).json()["id"])
    url = job["outputs"][0]["url"]
    assert_error_shape(requests.get(url.replace("sig=", "sig=0"), timeout=10), 404, "not_found")
    assert_error_shape(requests.get(url.split("?")[0] + "?expires=1&sig=x", timeout=10), 404)


def test_list_with_cursor_newest_first(server: Server):
    ids = [server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "pool": "idle"}).json()["id"]
           for _ in range(3)]
    first = server.call("GET", "/v1/jobs?limit=2", ALICE).json()
    second = server.call("GET", f"/v1/jobs?limit=2&cursor={first['next_cursor']}", ALICE).json()
    assert [j["id"] for j in first["jobs"] + second["jobs"]][:3] == ids[::-1]
    assert all(j["user_id"] == "alice" for j in first["jobs"] + second["jobs"])


def test_cancel_by_post_and_by_delete(server: Server):
    # Pool "idle" has no workers, so these stay queued until cancelled.
    a = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle"}).json()["id"]
    b = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle"}).json()["id"]
    assert server.call("POST", f"/v1/jobs/{a}/cancel").json()["status"] == "cancelled"
    assert server.call("DELETE", f"/v1/jobs/{b}").json()["status"] == "cancelled"
    assert server.call("GET", "/v1/jobs?status=cancelled").json()["jobs"][0]["id"] == b


def test_health_reports_store_queue_and_depth(server: Server):
    body = server.call("GET", "/health", headers={}).json()
    assert body["status"] == "ok" and body["store"] == "ok" and body["queue"] == "ok"
    assert isinstance(body["queue_depth"], int)


def test_missing_or_wrong_key_is_401(server: Server):
    assert_error_shape(server.call("GET", "/v1/jobs", headers={}), 401, "unauthorized")
    wrong = server.call("GET", "/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert_error_shape(wrong, 401)
    assert wrong.headers["WWW-Authenticate"] == "Bearer"


def test_a_user_bound_key_cannot_see_another_users_job(server: Server):
    mine = server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "user_id": "mallory"}).json()
    assert mine["user_id"] == "alice"  # a bound key always submits as its user
    assert_error_shape(server.call("GET", f"/v1/jobs/{mine['id']}", BOB), 404, "not_found")
    assert_error_shape(server.call("POST", f"/v1/jobs/{mine['id']}/cancel", BOB), 404)
    assert all(j["user_id"] == "bob" for j in server.call("GET", "/v1/jobs", BOB).json()["jobs"])
    assert server.call("GET", f"/v1/jobs/{mine['id']}", ADMIN).status_code == 200


@pytest.mark.parametrize(("kwargs", "status", "field"), [
    ({"data": b"{not json"}, 400, "body"),
    ({"json": {"workflow": {"nodes": [], "links": []}}}, 422, "workflow"),
    ({"json": {"workflow": {}}}, 422, "workflow"),
    ({"json": {"workflow": WORKFLOW, "media": [{"name": "a.png", "url": "file:///etc/passwd"}]}}, 422, "media[0].url"),
    ({"json": {"workflow": WORKFLOW, "limit_me": 1}}, 422, "limit_me"),
])
def test_bad_submissions_get_the_one_error_shape_naming_the_field(server: Server, kwargs: dict, status: int,
                                                                  field: str):
    before = [j.id for j in server.stack.services.store.list_jobs(limit=100).jobs]
    error = assert_error_shape(server.call("POST", "/v1/jobs", **kwargs), status)
    assert error["field"] == field
    assert [j.id for j in server.stack.services.store.list_jobs(limit=100).jobs] == before  # nothing stored


def test_other_errors_share_the_shape(server: Server):
    assert_error_shape(server.call("GET", "/v1/jobs/doesnotexist"), 404, "not_found")
    assert_error_shape(server.call("GET", "/v1/jobs?limit=abc"), 422)
    assert_error_shape(server.call("GET", "/v1/jobs?status=bogus"), 422)
    assert_error_shape(server.call("GET", "/nowhere"), 404)
    assert_error_shape(server.call("PUT", "/v1/jobs"), 405)


def test_an_oversize_body_is_refused_before_parsing(tmp_path: Path):
    with running_server(tmp_path, limits=Limits(max_body_bytes=1000)) as server:
        resp = server.call("POST", "/v1/jobs", data=json.dumps({"workflow": WORKFLOW, "metadata": {"x": "y" * 2000}}))
        assert_error_shape(resp, 413, "body_too_large")


def test_the_openapi_document_describes_the_routes(server: Server):
    doc = server.call("GET", "/openapi.json", headers={}).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/health"} <= set(doc["paths"])
    assert "JobRequest" in doc["components"]["schemas"]


def test_remote_functions_called_locally_match_http(server: Server, monkeypatch: pytest.MonkeyPatch):
    import app

    monkeypatch.setattr(app, "_services", lambda: server.stack.services)
    via_remote = app.submit_job.local({"workflow": WORKFLOW, "pool": "idle"}, user_id="carol")
    via_http = server.call("GET", f"/v1/jobs/{via_remote['id']}").json()
    assert _without_urls(app.get_job.local(via_remote["id"])) == _without_urls(via_http)
    listed = app.list_jobs.local(user_id="carol")
    assert [j["id"] for j in listed["jobs"]] == [via_remote["id"]]
    assert app.cancel_job.local(via_remote["id"], user_id="carol")["status"] == "cancelled"
    # Errors come back as the HTTP error body (a caller in another app cannot import our exceptions).
    assert app.get_job.local(via_remote["id"], user_id="dave")["error"]["status"] == 404
    refused = app.submit_job.local({"workflow": {}})["error"]
    assert (refused["status"], refused["type"], refused["field"]) == (422, "invalid_input", "workflow")


def _without_urls(job: dict) -> dict:
    return {**job, "outputs": [{k: v for k, v in o.items() if k != "url"} for o in job["outputs"]],
            "updated_at": None}


def test_metrics_parse_and_count_the_jobs_run(server: Server):
    from prometheus_client.parser import text_string_to_metric_families

    def families() -> dict:
        text = server.call("GET", "/metrics").text
        return {f.name: f for f in text_string_to_metric_families(text)}

    def count(fams: dict, status: str) -> float:
        return next(s.value for s in fams["comfy_jobs"].samples if s.labels["status"] == status)

    before = families()
    done = [server.done(server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW}).json()["id"]) for _ in range(3)]
    after = families()
    assert count(after, "completed") - count(before, "completed") == len(done) == 3
    phases = {s.labels["phase"]: s.value for s in after["comfy_job_phase_seconds"].samples
              if s.name.endswith("_count")}
    assert phases["execute"] >= 3 and phases["total"] == phases["execute"]
    assert {s.labels["pool"] for s in after["comfy_queue_depth"].samples} >= {"default"}
    assert server.call("GET", "/metrics", ALICE).status_code == 404  # user-bound keys see no global numbers


def test_quota_and_a_full_queue_answer_429_with_retry_after(tmp_path: Path):
    with running_server(tmp_path / "quota", max_active_jobs_per_user=1) as server:
        first = server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "pool": "idle"})
        assert first.status_code == 201
        second = server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "pool": "idle"})
        assert_error_shape(second, 429, "overloaded")
        assert int(second.headers["Retry-After"]) > 0
        server.call("POST", f"/v1/jobs/{first.json()['id']}/cancel", ALICE)
        assert server.call("POST", "/v1/jobs", ALICE, json={"workflow": WORKFLOW, "pool": "idle"}).status_code == 201
    with running_server(tmp_path / "full") as server:
        server.stack.services.store._q._target.capacity = 1  # the twin behind the guard: a one-item partition
        assert server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle"}).status_code == 201
        full = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle"})
        assert_error_shape(full, 429, "queue_full")
        assert "Retry-After" in full.headers
