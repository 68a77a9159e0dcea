"""The remote-callable functions other Modal apps use (`modal.Function.from_name`), called in-process with
`.local()`: every refusal comes back as the same error dict an HTTP client gets, never as a raised project
exception (which a caller in another app could not deserialize)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WORKFLOW, Server, running_server


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    import app

    with running_server(tmp_path, max_active_jobs=2) as server:
        monkeypatch.setattr(app, "_services", lambda: server.stack.services)
        yield app, server


def same_as_http(answer: dict, resp, status: int, kind: str) -> None:
    """The remote answer is the HTTP error body, plus its status (and retry_after_s for a 429)."""
    assert resp.status_code == status
    err = dict(answer["error"])
    assert (err.pop("status"), err["type"]) == (status, kind)
    if status == 429:
        assert err.pop("retry_after_s") == int(resp.headers["Retry-After"])
    assert err == resp.json()["error"]


def test_remote_errors_are_the_http_error_bodies(remote: tuple[object, Server]):
    app, server = remote
    missing = "0" * 32
    same_as_http(app.get_job.local(missing), server.call("GET", f"/v1/jobs/{missing}"), 404, "not_found")

    first = {"workflow": WORKFLOW, "pool": "idle", "idempotency_key": "k1"}
    assert "id" in app.submit_job.local(first)
    reused = {**first, "metadata": {"changed": True}}
    same_as_http(app.submit_job.local(reused), server.call("POST", "/v1/jobs", json=reused), 409, "conflict")

    unknown = {"workflow": WORKFLOW, "pool": "nope"}
    same_as_http(app.submit_job.local(unknown), server.call("POST", "/v1/jobs", json=unknown), 422, "invalid_input")

    assert "id" in app.submit_job.local({"workflow": WORKFLOW, "pool": "idle"})  # the second active job
    full = {"workflow": WORKFLOW, "pool": "idle"}
    same_as_http(app.submit_job.local(full), server.call("POST", "/v1/jobs", json=full), 429, "overloaded")


def test_remote_answers_never_raise(remote: tuple[object, Server]):
    app, _ = remote
    assert app.list_jobs.local(status="bogus")["error"]["status"] == 422
    assert app.cancel_job.local("../etc")["error"]["status"] == 404
