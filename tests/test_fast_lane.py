"""The fast lane answers exactly the requests its lanes name and leaves every other one to the app behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse

from comfy_saas.web.fast_lane import FastLane, Lane


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await PlainTextResponse("app", status_code=299)(scope, receive, send)


async def _job(request: Request, job_id: str) -> JSONResponse:
    return JSONResponse({"lane": "job", "job_id": job_id, "seen": request.path_params,
                         "wait": request.query_params.get("wait")})


async def _submit(request: Request) -> JSONResponse:
    return JSONResponse({"lane": "submit", "body": (await request.body()).decode()})


LANE = FastLane(_app, [Lane("GET", "/v1/jobs/{job_id}", _job), Lane("POST", "/v1/jobs", _submit)])


def call(method: str, path: str, body: bytes = b"", query: bytes = b"", **scope: Any) -> tuple[int, bytes]:
    """One request through the lane: (status, body)."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    full = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
            "headers": [], "root_path": "", **scope}
    asyncio.run(LANE(full, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_lane_answers_its_exact_path_with_the_parameter_and_the_query():
    status, body = call("GET", "/v1/jobs/abc123", query=b"wait=5")
    assert status == 200
    assert body == b'{"lane":"job","job_id":"abc123","seen":{"job_id":"abc123"},"wait":"5"}'


def test_a_lane_without_a_parameter_reads_the_body():
    assert call("POST", "/v1/jobs", body=b'{"workflow":{}}') == (200, b'{"lane":"submit","body":"{\\"workflow\\":{}}"}')


@pytest.mark.parametrize(("method", "path", "extra"), [
    ("GET", "/v1/jobs/", {}),  # a trailing slash: the app redirects or refuses it as before
    ("GET", "/v1/jobs/abc/cancel", {}),  # a longer path
    ("GET", "/v1/jobsabc", {}),
    ("POST", "/v1/jobs/abc", {}),  # another method
    ("HEAD", "/v1/jobs/abc", {}),
    ("GET", "/v1/jobs", {}),
    ("POST", "/v1/jobs/", {}),
    ("GET", "/k/key/v1/jobs/abc", {}),  # a prefix the app's middleware strips
    ("GET", "/v1/jobs/abc", {"root_path": "/mounted"}),  # mounted under a root path: the app's routing decides
])
def test_everything_else_goes_to_the_app(method, path, extra):
    assert call(method, path, **extra) == (299, b"app")


def test_a_websocket_goes_to_the_app():
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    async def nothing() -> dict[str, Any]:
        return {}

    scope = {"type": "websocket", "path": "/v1/jobs/abc", "root_path": ""}
    asyncio.run(FastLane(app, [Lane("GET", "/v1/jobs/{job_id}", _job)])(scope, nothing, nothing))
    assert seen == [scope]
