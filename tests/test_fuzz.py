"""Hostile input: schemathesis generates requests from the local API's OpenAPI; none may get a 5xx."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from comfy_saas.config import Settings
from comfy_saas.jobs.services import local_services
from comfy_saas.web.http import create_app

HEADERS = {"Authorization": "Bearer fuzz-key"}


def test_no_generated_request_gets_a_server_error(tmp_path: Path):
    svc = local_services(Settings(data_dir=tmp_path, api_keys="fuzz-key", url_signing_secret="s"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(svc))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for operation in operations:

        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])

        check()


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


_WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}}}
# The hostile inputs of issue 13, as schemathesis cases on top of the generated ones.
HOSTILE = [
    ("/v1/jobs", "GET", {"query": {"limit": "²"}}), ("/v1/jobs", "GET", {"query": {"cursor": "²"}}),
    ("/v1/jobs", "GET", {"query": {"limit": "9" * 5000}}), ("/v1/jobs", "GET", {"query": {"cursor": "9" * 5000}}),
    ("/v1/jobs", "GET", {"query": {"cursor": "999999999999999999"}}),
    ("/v1/jobs", "GET", {"query": {"user_id": "alice\n"}}),
    ("/v1/jobs/{job_id}", "GET", {"path_parameters": {"job_id": "a" * 10_000}}),
    ("/v1/jobs/{job_id}/events", "GET", {"path_parameters": {"job_id": "x"}, "headers": {"Last-Event-ID": "²"}}),
    ("/v1/jobs/{job_id}/events", "GET", {"path_parameters": {"job_id": "x"}, "query": {"last_event_id": "9" * 5000}}),
    ("/files/{key}", "GET", {"path_parameters": {"key": "a"}, "query": {"expires": "²", "sig": "é"}}),
    ("/files/{key}", "GET", {"path_parameters": {"key": "../../etc/passwd"}, "query": {"expires": "9" * 5000}}),
    ("/v1/jobs", "POST", {"body": {"workflow": {"1": {"class_type": "X", "inputs": {"a": _deep(300)}}}}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "pool": "x\n"}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "user_id": "alice\n"}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "media": [{"name": "a.png\n", "url": "https://example.com/a"}]}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "media": [{"name": "a.png", "url": "http://example.com:99999/"}]}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "webhook_url": "http://example.com:abc/"}}),
    ("/v1/jobs", "POST", {"body": {"workflow": _WF, "webhook_url": "http://[2002:a9fe:a9fe::]/"}}),
    ("/v1/jobs", "POST", {"body": {"workflow": {"../x": _WF["1"]}}}),
    ("/v1/jobs", "POST", {"body": {"workflow": {**_WF, "2": {"class_type": "SaveImage", "inputs": {
        "images": ["1", 0], "filename_prefix": "../../../../tmp/x"}}}}}),
    ("/v1/jobs", "POST", {"body": {"workflow": {**_WF, "3": {"class_type": "LoadImage", "inputs": {
        "image": "ComfyUI_00001_.png [output]"}}}}}),
]


def test_the_hostile_cases_get_no_server_error(tmp_path: Path):
    svc = local_services(Settings(data_dir=tmp_path, api_keys="fuzz-key", url_signing_secret="s"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(svc))
    for path, method, parts in HOSTILE:
        case = schema[path][method].Case(**parts)
        response = case.call(headers=HEADERS)
        case.validate_response(response, checks=[not_a_server_error])
        body = response.json()
        if response.status_code == 200:  # only the cursor past the end: an empty last page
            assert body == {"jobs": [], "next_cursor": None}, (path, parts)
        else:
            assert 400 <= response.status_code < 500 and body["error"]["message"], (path, parts)
