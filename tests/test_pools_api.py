"""Pools at the edge: unknown pools and pools a key may not use are refused naming the pools, job timeouts are
capped by the pool, each pool's own node catalogue validates its jobs, and a deployment without a webhook
secret refuses webhooks. Also: both homes document the same operations from one route table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ADMIN, WORKFLOW, Server, running_server
from fake_comfy import CATALOGUE, InstantComfy

from comfy_saas.config import Settings
from comfy_saas.errors import InvalidInput, PreflightFailed
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services
from comfy_saas.runner.worker import Worker
from comfy_saas.web.auth import parse_api_keys


def error(resp) -> dict:
    return resp.json()["error"]


def test_an_unknown_pool_is_refused_naming_the_pools(server: Server):
    resp = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "gpu-huge"})
    assert resp.status_code == 422
    assert error(resp)["field"] == "pool" and "default, idle" in error(resp)["message"]


def test_a_key_limited_to_pools_uses_them_only(tmp_path: Path):
    keys = "admin-key, vid-key@idle, carol-key:carol@default|idle"
    with running_server(tmp_path, api_keys=keys) as server:
        vid, carol = {"Authorization": "Bearer vid-key"}, {"Authorization": "Bearer carol-key"}
        own = server.call("POST", "/v1/jobs", vid, json={"workflow": WORKFLOW})
        assert own.status_code == 201 and own.json()["pool"] == "idle"  # its first pool is its default
        refused = server.call("POST", "/v1/jobs", vid, json={"workflow": WORKFLOW, "pool": "default"})
        assert refused.status_code == 422 and "idle" in error(refused)["message"]
        assert error(refused)["field"] == "pool"
        job = server.call("POST", "/v1/jobs", carol, json={"workflow": WORKFLOW, "pool": "idle"}).json()
        assert (job["pool"], job["user_id"]) == ("idle", "carol")
        assert server.call("POST", "/v1/jobs", ADMIN, json={"workflow": WORKFLOW, "pool": "idle"}).status_code == 201


@pytest.mark.parametrize(("spec", "expected"), [
    ("k", ("k", None, None)),
    ("k:alice", ("k", "alice", None)),
    ("k@video|default", ("k", None, ("video", "default"))),
    ("k:alice@video", ("k", "alice", ("video",))),
    ("k:alice@example.com", ("k", "alice@example.com", None)),  # not a pool list: part of the user id
])
def test_api_key_spec(spec: str, expected: tuple):
    assert tuple(parse_api_keys(spec)[0]) == expected


def test_job_timeouts_are_capped_by_the_pools_workers(tmp_path: Path):
    with running_server(tmp_path, pools="default:max_timeout_s=600,idle:max_timeout_s=600") as server:
        over = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle", "timeout_s": 601})
        assert over.status_code == 422 and error(over)["field"] == "timeout_s" and "600" in error(over)["message"]
        capped = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle"}).json()
        assert capped["timeout_s"] == 600  # the default (3600) would outlive the worker
        asked = server.call("POST", "/v1/jobs", json={"workflow": WORKFLOW, "pool": "idle", "timeout_s": 60}).json()
        assert asked["timeout_s"] == 60


def test_each_pool_validates_against_its_own_catalogue(svc: Services, tmp_path: Path):
    svc.settings = svc.store.settings = replace(svc.settings, pools="default,video")
    video_nodes = {**CATALOGUE, "VideoCombine": {"input": {}, "output": []}}
    Worker(svc, InstantComfy(), scratch_dir=tmp_path).prepare()
    Worker(svc, InstantComfy(video_nodes), pool="video", scratch_dir=tmp_path).prepare()
    workflow = {**WORKFLOW, "3": {"class_type": "VideoCombine", "inputs": {}}}
    with pytest.raises(PreflightFailed, match="VideoCombine"):
        submit_job(svc, Caller("k"), {"workflow": workflow})
    view, created = submit_job(svc, Caller("k"), {"workflow": workflow, "pool": "video"})
    assert created and view["pool"] == "video"


def deployed(svc: Services, **settings: object) -> Services:
    """The same store seen as a deployment (storage on R2, so no derived local secrets)."""
    s = replace(svc.settings, storage_backend="s3", private_url_allowlist="127.0.0.0/8", **settings)
    return Services(s, svc.store, svc.objects)


def test_without_a_webhook_secret_a_deployment_refuses_webhooks(svc: Services):
    body = {"workflow": WORKFLOW, "webhook_url": "http://127.0.0.1:9/hook"}
    with pytest.raises(InvalidInput) as refused:
        submit_job(deployed(svc), Caller("k"), body)
    assert refused.value.field == "webhook_url" and "COMFY_WEBHOOK_SECRET" in refused.value.message
    assert submit_job(deployed(svc), Caller("k"), {"workflow": WORKFLOW})[1]  # no webhook: no secret needed
    assert submit_job(deployed(svc, webhook_secret="whsec_dGVzdA=="), Caller("k"), body)[1]


def test_settings_refuse_a_default_pool_that_is_not_served():
    with pytest.raises(ValueError, match="COMFY_DEFAULT_POOL"):
        Settings.from_env({"COMFY_POOLS": "video", "COMFY_DEFAULT_POOL": "default"})
    with pytest.raises(ValueError, match="COMFY_POOLS"):
        Settings.from_env({"COMFY_POOLS": "default:floor=5:ceiling=2"})


def test_both_homes_document_the_same_operations(svc: Services):
    import modal_private

    import app
    from comfy_saas.web.http import create_app
    from comfy_saas.web.routes import ROUTES

    local = create_app(svc).openapi()
    for route in ROUTES:
        method = route.method.lower()
        on_modal = modal_private.web_app(app.ENDPOINTS[route.name], route.method).openapi()["paths"]["/"][method]
        here = local["paths"][route.path][method]
        assert (here["summary"], here["description"]) == (on_modal["summary"], on_modal["description"])
        assert _params(here) == _params(on_modal), route.name
    assert local["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobRequest"}


def _params(operation: dict) -> list[tuple]:
    """(name, in, required) of each parameter, what the route names (a path parameter locally, a query parameter
    on Modal) under one name: the one difference Modal forces."""
    out = []
    for p in operation.get("parameters", []):
        if p["name"] in {"job_id", "id", "name", "sha256"}:
            out.append(("<target>", "located", "described" if p.get("description") else ""))
        else:
            out.append((p["name"], p["in"], p.get("required", False)))
    return out
