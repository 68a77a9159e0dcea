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
