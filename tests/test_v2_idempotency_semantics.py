"""Idempotency-Key on POST /api/v2/jobs keeps issue 18's Stripe semantics where the contract makes keys single-use:
what a client receives in each case, and that the README's "where we differ" says so precisely."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALICE, Server, running_server

from comfy_saas.jobs import idempotency as jobs_idempotency
from comfy_saas.jobs.lifecycle import request_digest
from comfy_saas.jobs.operations import route_to_pool
from comfy_saas.jobs.request import parse_submission
from comfy_saas.web.auth import authenticate

ROOT = Path(__file__).parent.parent
WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 5}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "idem"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("idem"), pools="default,idle") as s:
        yield s


def post(srv: Server, body: dict, key: str):
    return srv.call("POST", "/api/v2/jobs", {**ALICE, "Idempotency-Key": key}, json=body)


def test_a_retry_while_the_first_is_stored_is_409_with_retry_after(srv: Server,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_idempotency, "WAIT_FOR_ORIGINAL_S", 0.05)
    svc = srv.stack.services
    caller = authenticate(svc.settings, ALICE["Authorization"])
    request = route_to_pool(svc, caller, parse_submission({"workflow": WF, "metadata": {},
                                                           "idempotency_key": "v2:in-flight"}))
    request = request.model_copy(update={"user_id": caller.user_id})
    # a first request that claimed the key and whose job is still being stored
    svc.store.idempotency.claim(caller.user_id, "v2:in-flight", "f" * 32, request_digest(request))
    retry = post(srv, {"workflow": WF}, "in-flight")
    assert retry.status_code == 409 and int(retry.headers["Retry-After"]) >= 1
    assert retry.json()["error"]["code"] == "idempotency_key_in_use"


def differences() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Comfy API v2"):readme.index("### Assets")]
    return re.sub(r"\s+", " ", section[section.index("Where we differ from the contract"):])


def test_the_readme_says_where_and_why_idempotency_differs_from_the_contract() -> None:
    contract = re.sub(r"\s+", " ", (ROOT / "tests/fixtures/comfy-api-v2/openapi.yaml").read_text())
    assert "single-use" in contract and "no `Idempotency-Replayed` header" in contract  # what the contract says
    text = differences()
    for said in ("single-use", "Stripe semantics", "201 with `Idempotency-Replayed: true`",
                 "422 `idempotency_key_reuse`", "409 `idempotency_key_in_use` with `Retry-After`",
                 "a code the contract does not have", "Why:", "keys live 24 h"):
        assert said in text, said
