"""Comfy API v2 jobs over HTTP against the local stack: the contract's shapes and codes, one job system with /v1
(a v2 job is a job), Idempotency-Key, back-pressure, tenancy across user-bound keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ADMIN, ALICE, BOB, KEYS, Server, running_server, submit, wait_until

from comfy_saas.errors import IdempotencyInFlight
from comfy_saas.jobs import idempotency as jobs_idempotency
from comfy_saas.jobs.lifecycle import request_digest
from comfy_saas.jobs.model import Job, JobError, Status
from comfy_saas.jobs.operations import Caller, route_to_pool
from comfy_saas.jobs.request import parse_submission
from comfy_saas.jobs.sweeper import sweep
from comfy_saas.v2 import jobs as v2jobs
from comfy_saas.v2.views import v2_status

CAROL = {"Authorization": "Bearer carol-key"}  # bound to carol, limited to the "idle" pool nobody serves
DAVE = {"Authorization": "Bearer dave-key"}  # the same, on a server with a cap of two active jobs per user
WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 7}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "v2"}}}


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("v2"), api_keys=f"{KEYS}, carol-key:carol@idle") as srv:
        yield srv


def post(srv: Server, body: dict, headers: dict = ALICE, key: str | None = None):
    extra = {"Idempotency-Key": key} if key is not None else {}
    return srv.call("POST", "/api/v2/jobs", {**headers, **extra}, json=body)


def finished(srv: Server, job_id: str, headers: dict = ALICE) -> dict:
    def done() -> dict | None:
        body = srv.call("GET", f"/api/v2/jobs/{job_id}", headers).json()
        return body if body["status"] in {"succeeded", "failed", "canceled", "expired"} else None
    return wait_until(done, 30, f"v2 job {job_id}")


def test_a_v2_job_is_a_job_and_both_surfaces_agree(v2: Server):
    created = post(v2, {"workflow": WF, "metadata": {"run": "a"}})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["urls"]["self"] == f"/api/v2/jobs/{job['id']}"
    done = finished(v2, job["id"])
    v1 = v2.call("GET", f"/v1/jobs/{job['id']}", ALICE).json()
    assert (done["status"], v1["status"]) == ("succeeded", "completed")
    assert [o["name"] for o in done["outputs"]] == [o["filename"] for o in v1["outputs"]] == ["v2_0.png"]
    out = done["outputs"][0]
    assert (out["type"], out["content_type"], out["node_id"], out["job_id"]) == ("image", "image/png", "2", job["id"])
    assert out["size_bytes"] == v1["outputs"][0]["size_bytes"]
    assert done["progress"]["value"] == 1.0 and done["completed_at"] and done["started_at"]
    assert done["metrics"]["execution_ms"] is not None and done["metrics"]["queue_ms"] is not None
    assert done["metadata"] == {"run": "a"} and v1["metadata"] == {"run": "a"}
    assert v2.call("GET", out["url"].removeprefix(v2.base), {}).content[:4] == b"\x89PNG"
    ran = v2.call("GET", f"/api/v2/jobs/{job['id']}/workflow", ALICE).json()
    assert ran == {"workflow": WF, "format": "api"}
    # /v1 jobs show up on v2 too
    v1_job = v2.call("POST", "/v1/jobs", ALICE, json={"workflow": WF}).json()
    assert finished(v2, v1_job["id"])["status"] == "succeeded"


def test_refusals_use_the_contract_codes(v2: Server):
    ui = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}
    assert post(v2, {"workflow": ui}).json()["error"]["code"] == "workflow_format_ui"
    broken = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
              "2": {"class_type": "NoSuchNode", "inputs": {}}}
    refused = post(v2, {"workflow": broken})
    assert refused.status_code == 422
    err = refused.json()["error"]
    assert err["code"] == "invalid_workflow" and set(err["details"]["node_errors"]) == {"1", "2"}
    assert err["details"]["node_errors"]["1"][0]["field"] == "images"
    for body, field in (({"workflow": WF, "webhook_url": "https://example.com"}, "webhook_url"),
                        ({"workflow": WF, "inputs": {}}, "inputs"), ({"workflow": WF, "pool": "x"}, "pool"),
                        ({"workflow": WF, "extra_data": {"other": 1}}, "extra_data"),
                        ({"workflow": WF, "metadata": {"k": 1}}, "metadata")):
        answer = post(v2, body)
        assert answer.status_code == 422 and answer.json()["error"]["details"] == {"field": field}, body
    assert post(v2, {"workflow": "x"}).json()["error"]["code"] == "invalid_workflow"
    raw = v2.call("POST", "/api/v2/jobs", {**ALICE, "content-type": "application/json"}, data=b"{nope")
    assert raw.status_code == 422 and raw.json()["error"]["code"] == "invalid_request"
    nobody = v2.call("GET", "/api/v2/jobs/0123456789abcdef0123456789abcdef", {"Authorization": "Bearer wrong"})
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "unauthorized"
    missing = v2.call("GET", "/api/v2/jobs/0123456789abcdef0123456789abcdef", ALICE)
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "not_found", "message": "no job "
                                                             "'0123456789abcdef0123456789abcdef'", "details": None}}
    assert v2.call("GET", "/api/v2/nothing/here", ALICE).json()["error"]["code"] == "not_found"
    assert v2.call("POST", "/api/v2/jobs", ALICE, json={"workflow": WF, "extra_data": {
        "api_key_comfy_org": "k"}}).status_code == 201


def test_idempotency_key_replays_the_first_job_and_refuses_another_body(v2: Server):
    first = post(v2, {"workflow": WF}, key="key-1")
    again = post(v2, {"workflow": WF, "extra_data": {"api_key_comfy_org": "k"}}, key="key-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    other = post(v2, {"workflow": {**WF, "1": {**WF["1"], "inputs": {**WF["1"]["inputs"], "color": 9}}}}, key="key-1")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reuse"
    # keys are per user: bob's key-1 is his own
    assert post(v2, {"workflow": WF}, BOB, key="key-1").json()["id"] != first.json()["id"]
    # a refused submission frees its key for the corrected retry
    assert post(v2, {"workflow": {"1": {"class_type": "NoSuchNode"}}}, key="key-2").status_code == 422
    assert post(v2, {"workflow": WF}, key="key-2").status_code == 201
    blank = post(v2, {"workflow": WF}, {**ALICE, "Idempotency-Key": "x" * 256})
    assert blank.status_code == 422 and blank.json()["error"]["details"] == {"field": "Idempotency-Key"}


def test_keys_expire_after_a_day_and_a_retry_while_the_first_is_stored_is_409(svc, monkeypatch):
    now = [svc.store.clock()]
    svc.store.clock = lambda: now[0]
    op, raw = Caller(key_id="op"), json.dumps({"workflow": WF}).encode()
    first, replayed = v2jobs.submit(svc, op, raw, "day-key")
    assert not replayed and svc.store.get(first["id"]).idempotency_key == "v2:day-key"  # the job's own key
    assert v2jobs.submit(svc, op, raw, "day-key")[0]["id"] == first["id"]
    now[0] += timedelta(hours=25)
    later, replayed = v2jobs.submit(svc, op, raw, "day-key")
    assert not replayed and later["id"] != first["id"]
    # a first request that claimed its key and is not stored yet (a job record that never appears)
    monkeypatch.setattr(jobs_idempotency, "WAIT_FOR_ORIGINAL_S", 0.1)
    svc.store.idempotency.claim(None, "v2:ghost-key", "ghost", _digest(svc, op, {"workflow": WF}, "v2:ghost-key"))
    with pytest.raises(IdempotencyInFlight) as in_flight:
        v2jobs.submit(svc, op, raw, "ghost-key")
    assert in_flight.value.retry_after_s >= 1


def _digest(svc, caller: Caller, body: dict, key: str) -> str:
    """What the lifecycle compares a repeat by, for this submission."""
    request = route_to_pool(svc, caller, parse_submission({**body, "metadata": {}, "idempotency_key": key}))
    return request_digest(request)


def test_queued_jobs_have_a_queue_position_and_cancel_at_once(v2: Server):
    job = post(v2, {"workflow": WF}, CAROL).json()
    seen = v2.call("GET", f"/api/v2/jobs/{job['id']}", CAROL).json()
    assert seen["status"] == "queued" and isinstance(seen["queue_position"], int)
    canceled = v2.call("POST", f"/api/v2/jobs/{job['id']}/cancel", CAROL)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert canceled.json()["error"]["code"] == "canceled"
    again = v2.call("POST", f"/api/v2/jobs/{job['id']}/cancel", CAROL)  # idempotent on a finished job
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert v2.call("GET", f"/v1/jobs/{job['id']}", CAROL).json()["status"] == "cancelled"


def test_a_full_queue_is_429_queue_full_with_retry_after(tmp_path: Path):
    with running_server(tmp_path, api_keys=f"{KEYS}, dave-key:dave@idle", max_active_jobs_per_user=2) as srv:
        for _ in range(2):
            assert post(srv, {"workflow": WF}, DAVE).status_code == 201
        full = post(srv, {"workflow": WF}, DAVE)
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
    assert int(full.headers["Retry-After"]) >= 1


def test_user_bound_keys_never_see_each_others_jobs(v2: Server):
    job = post(v2, {"workflow": WF}, ALICE).json()
    output = finished(v2, job["id"])["outputs"][0]["id"]
    for path in (f"/api/v2/assets/{output}", f"/api/v2/assets/{output}/content"):  # outputs are the job's
        assert v2.call("GET", path, BOB).status_code == 404 and v2.call("GET", path, ALICE).status_code == 200
    for method, path in (("GET", ""), ("GET", "/workflow"), ("POST", "/cancel"), ("GET", "/events")):
        answer = v2.call(method, f"/api/v2/jobs/{job['id']}{path}", BOB)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
    bobs = v2.call("GET", "/api/v2/jobs?limit=100", BOB).json()["jobs"]
    assert job["id"] not in {j["id"] for j in bobs}
    assert job["id"] in {j["id"] for j in v2.call("GET", "/api/v2/jobs?limit=100", ALICE).json()["jobs"]}
    assert v2.call("GET", f"/api/v2/jobs/{job['id']}", ADMIN).status_code == 200  # not bound to a user


def test_the_list_pages_with_a_cursor_and_filters_by_v2_status(v2: Server):
    ids = [post(v2, {"workflow": WF}, BOB).json()["id"] for _ in range(2)]
    for job_id in ids:
        finished(v2, job_id, BOB)
    first = v2.call("GET", "/api/v2/jobs?limit=1", BOB).json()
    assert [j["id"] for j in first["jobs"]] == ids[-1:] and first["next_cursor"]
    second = v2.call("GET", f"/api/v2/jobs?limit=1&cursor={first['next_cursor']}", BOB).json()
    assert [j["id"] for j in second["jobs"]] == ids[:1]
    done = v2.call("GET", "/api/v2/jobs?status=succeeded&limit=100", BOB).json()["jobs"]
    assert set(ids) <= {j["id"] for j in done} and {j["status"] for j in done} == {"succeeded"}
    assert v2.call("GET", "/api/v2/jobs?status=queued,canceling", BOB).json()["jobs"] == []
    labelled = post(v2, {"workflow": WF, "metadata": {"batch": "b7"}}, BOB).json()["id"]
    found = v2.call("GET", "/api/v2/jobs?metadata[batch]=b7", BOB).json()["jobs"]
    assert [j["id"] for j in found] == [labelled]
    bad = v2.call("GET", "/api/v2/jobs?status=done", BOB)
    assert bad.status_code == 422 and bad.json()["error"]["details"] == {"field": "status"}


def test_health(v2: Server):
    answer = v2.call("GET", "/api/v2/health", {})
    assert answer.status_code == 200 and answer.json()["status"] == "healthy"


def test_a_job_the_sweeper_timed_out_in_the_queue_is_expired(svc):
    job = submit(svc)
    sweep(svc, now=svc.store.clock() + timedelta(seconds=svc.settings.queue_timeout_s + 60))
    view = v2jobs.get(svc, Caller(key_id="op"), job.id)
    assert (view["status"], view["error"]["code"]) == ("expired", "queue_timeout") and view["completed_at"]
    assert svc.store.get(job.id).status is Status.FAILED  # the job model is unchanged: expired is a rendering


def test_run_time_outs_are_expired_and_a_pending_cancel_is_canceling():
    now = Job(id="j", created_at="2026-01-01T00:00:00Z", updated_at="2026-01-01T00:00:00Z").created_at
    base = {"id": "j", "created_at": now, "updated_at": now}
    assert v2_status(Job(**base, status=Status.FAILED, error=JobError(type="timeout", message="m"))) == "expired"
    assert v2_status(Job(**base, status=Status.FAILED, error=JobError(type="execution_error", message="m"))) == "failed"
    assert v2_status(Job(**base, status=Status.RUNNING), cancel_requested=True) == "canceling"
