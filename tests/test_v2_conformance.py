"""Conformance: schemathesis runs the Comfy API v2 contract (tests/fixtures/comfy-api-v2/openapi.yaml, a copy of
../shared/comfy-api-v2) against the local server: every operation, positive and negative cases, no 5xx, and
every response matches the schema the contract gives for its status."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import schemathesis
import yaml
from conftest import ADMIN, Server, running_server, wait_until
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

SPEC = Path(__file__).parent / "fixtures" / "comfy-api-v2" / "openapi.yaml"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 20
WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "c"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("conformance")) as shared:
        yield shared


@pytest.fixture(scope="module")
def finished_job(srv: Server) -> str:
    """A job that ran, so the cases naming it reach the success paths."""
    job_id = srv.call("POST", "/api/v2/jobs", json={"workflow": WF}).json()["id"]
    wait_until(lambda: srv.call("GET", f"/api/v2/jobs/{job_id}").json()["status"] == "succeeded", 30, "the job")
    return job_id


def run(srv: Server, strategy, examples: int = EXAMPLES, headers: dict | None = None) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        response = case.call(base_url=srv.base, headers=ADMIN if headers is None else headers, timeout=20)
        ctype = (response.headers.get("content-type") or [""])[0]  # schemathesis keeps each header as a list
        if ctype.startswith("text/event-stream"):
            # The contract types the stream as a string; its events are typed in x-sse-events (checked here).
            case.validate_response(response, checks=[not_a_server_error, content_type_conformance])
            check_events(response.text)
        else:
            case.validate_response(response, checks=CHECKS)

    check()


def check_events(text: str) -> None:
    """Every SSE frame names an event of the catalogue and its data matches that event's schema."""
    spec = _spec()
    catalogue = spec["paths"]["/api/v2/jobs/{id}/events"]["get"]["x-sse-events"]
    components = {"components": _nullable(spec["components"])}
    for block in filter(None, text.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if not lines:
            continue
        ref = {"$ref": catalogue[lines["event"]]["schema"], **components}
        jsonschema.validate(json.loads(lines["data"]), ref)


@functools.cache
def _spec() -> dict:
    return yaml.safe_load(SPEC.read_text())


def _nullable(node):
    """OpenAPI 3.0's `nullable` as JSON Schema's null type."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def operations() -> list:
    schema = schemathesis.openapi.from_path(SPEC)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_contract_lists_what_we_serve():
    ids = {op.definition.raw["operationId"] for op in operations()}
    assert {"postJobs", "getJob", "getJobWorkflow", "getJobEvents", "cancelJob", "postAssets", "assetFromHash",
            "headAssetByHash", "getAsset", "getAssetContent", "deleteAsset"} == ids


def test_generated_requests_get_conforming_answers(srv: Server):
    for op in operations():
        run(srv, op.as_strategy(generation_mode=GenerationMode.POSITIVE))


def test_requests_breaking_the_schema_get_conforming_answers(srv: Server):
    """Negative cases, for the operations with a body: a path id or a Range header is any string, so those
    have no request that breaks the schema."""
    with_body = [op for op in operations() if op.body]
    assert {op.label for op in with_body} == {"POST /api/v2/jobs", "POST /api/v2/assets",
                                              "POST /api/v2/assets/from-hash"}
    for op in with_body:
        run(srv, op.as_strategy(generation_mode=GenerationMode.NEGATIVE))


def test_requests_naming_a_real_job_get_conforming_answers(srv: Server, finished_job: str):
    for op in operations():
        if "{id}" in op.path and op.path.startswith("/api/v2/jobs"):
            run(srv, op.as_strategy(path_parameters={"id": finished_job}), examples=5)


@pytest.mark.parametrize("key", ["", "Bearer not-a-key"], ids=["no-key", "wrong-key"])
def test_unauthenticated_requests_get_conforming_answers(srv: Server, key: str):
    for op in operations():
        run(srv, op.as_strategy(), examples=3, headers={"Authorization": key} if key else {})


def test_a_real_submission_and_its_replay_conform(srv: Server):
    schema = schemathesis.openapi.from_path(SPEC)
    for _ in range(2):  # the first creates, the second (same key, same body) is the replay
        case = schema["/api/v2/jobs"]["POST"].Case(body={"workflow": WF}, headers={"Idempotency-Key": "conf-1"})
        response = case.call(base_url=srv.base, headers=ADMIN, timeout=20)
        assert response.status_code == 201
        case.validate_response(response, checks=CHECKS)
