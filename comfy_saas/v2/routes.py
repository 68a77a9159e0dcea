"""The Comfy API v2 routes: parse the request, call one operation (v2/jobs.py, v2 assets), serialize; every
error becomes the contract's envelope in v2/errors.py. Store calls block, so they run in the threadpool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from comfy_saas.errors import ComfySaasError, TooManyStreams
from comfy_saas.jobs import operations as api
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.v2 import events
from comfy_saas.v2 import jobs as v2jobs
from comfy_saas.v2.asset_routes import add_asset_routes
from comfy_saas.v2.errors import envelope, error_response
from comfy_saas.web import fast_lane
from comfy_saas.web.auth import authenticate
from comfy_saas.web.bodies import read_capped
from comfy_saas.web.fast_lane import Lane
from comfy_saas.web.offload import store_read, submission

ServicesFn = Callable[[], Services]
STREAM_RETRY_AFTER_S = 5  # a stream ends with its job or its time limit, so a place frees itself in time
_EVERY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def mount(app: FastAPI, services: ServicesFn, events_stream_s: float | None = None) -> None:
    """Add every v2 route to `app` (jobs, assets, health; anything else under /api/v2 is a v2 `not_found`).
    An events stream ends after `events_stream_s` (default: deploy.toml's api.events_stream_s)."""
    if events_stream_s is None:
        from comfy_saas.config.deploy import Api

        events_stream_s = float(Api().events_stream_s)
    router = APIRouter(include_in_schema=False)  # the contract is its own document (Comfy API v2 openapi.yaml)
    jobs = add_job_routes(router, services, events_stream_s)
    add_asset_routes(router, services)
    router.add_api_route("/api/v2/{rest:path}", _unknown, methods=_EVERY_METHOD, include_in_schema=False)
    app.include_router(router)
    fast_lane.offer(app, [Lane("POST", "/api/v2/jobs", jobs.post_jobs), Lane("GET", "/api/v2/jobs/{id}", jobs.get_job)])


def caller(svc: Services, request: Request) -> Caller:
    """Who asks: the same keys, users and pools as /v1 (`Authorization: Bearer`)."""
    return authenticate(svc.settings, request.headers.get("authorization"))


def root(request: Request) -> str:
    """The prefix this app is mounted under, for host-relative links."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or {})


def error(exc: BaseException) -> JSONResponse:
    """Any exception as the contract's error envelope."""
    return json_response(*error_response(exc))


async def answer(call: Callable[[], tuple[int, Any]], headers: dict[str, str] | None = None,
                 read: bool = False) -> Response:
    """Run a blocking operation in the threadpool (`read`: a read of the store alone, see web/offload.py);
    (status, body) or the error envelope."""
    try:
        status, body = await (store_read(call) if read else run_in_threadpool(call))
    except Exception as exc:
        return error(exc)
    return json_response(status, body, headers)


async def read_body(svc: Services, request: Request) -> bytearray:
    """The body, streamed under the size cap (a declared size over it is refused unread)."""
    return await read_capped(request, svc.settings.limits.max_body_bytes)


def add_job_routes(router: APIRouter, services: ServicesFn, events_stream_s: float) -> JobHandlers:
    """POST/GET /api/v2/jobs, GET /api/v2/jobs/{id}, .../workflow, .../cancel, .../events, GET /api/v2/health;
    the handlers."""
    h = JobHandlers(services, events_stream_s)
    for method, path, handler in (("POST", "/api/v2/jobs", h.post_jobs), ("GET", "/api/v2/jobs", h.list_jobs),
                                  ("GET", "/api/v2/jobs/{id}", h.get_job),
                                  ("GET", "/api/v2/jobs/{id}/workflow", h.get_job_workflow),
                                  ("POST", "/api/v2/jobs/{id}/cancel", h.cancel_job),
                                  ("GET", "/api/v2/jobs/{id}/events", h.job_events),
                                  ("GET", "/api/v2/health", h.health)):
        router.add_api_route(path, handler, methods=[method], summary=(handler.__doc__ or "").split("\n")[0])
    return h


class JobHandlers:
    """The job routes' handlers over the services `services()` builds."""

    def __init__(self, services: ServicesFn, events_stream_s: float) -> None:
        self.services = services
        self.events_stream_s = events_stream_s
        self.open_streams: Counter[str | None] = Counter()  # event streams open now, per API key id

    async def post_jobs(self, request: Request) -> Response:
        """Submit an API-format workflow; authenticated before a byte of the body is read."""
        svc = self.services()
        try:
            who = caller(svc, request)
            raw = await read_body(svc, request)
        except ComfySaasError as exc:
            status, body, headers = error_response(exc)
            return json_response(status, body, {**headers, "Connection": "close"})
        key = request.headers.get("idempotency-key")
        try:
            view, replayed = await submission(raw, v2jobs.submit, svc, who, raw, key, root(request))
        except Exception as exc:
            return error(exc)
        return json_response(201, view, {"Idempotency-Replayed": "true"} if replayed else None)

    async def list_jobs(self, request: Request) -> Response:
        """The caller's jobs, newest first, in cursor pages."""
        svc, query = self.services(), dict(request.query_params)
        return await answer(lambda: (200, v2jobs.list_jobs(svc, caller(svc, request), query, root(request))))

    async def get_job(self, request: Request, id: str) -> Response:
        """A job: status, progress, outputs (the polling workhorse)."""
        svc = self.services()
        return await answer(lambda: (200, v2jobs.get(svc, caller(svc, request), id, root(request))), read=True)

    async def get_job_workflow(self, request: Request, id: str) -> Response:
        """The API-format workflow a job ran."""
        svc = self.services()
        return await answer(lambda: (200, v2jobs.workflow(svc, caller(svc, request), id)))

    async def cancel_job(self, request: Request, id: str) -> Response:
        """Request cancellation (idempotent)."""
        svc = self.services()
        return await answer(lambda: (200, v2jobs.cancel(svc, caller(svc, request), id, root(request))))

    async def job_events(self, request: Request, id: str) -> Response:
        """Live events (SSE) until the job ends, or the stream's time limit; at most
        v2_max_streams_per_key open at once per API key in this process (429 too_many_streams)."""
        svc = self.services()
        try:
            who = caller(svc, request)
            job = await run_in_threadpool(lambda: api.visible_job(svc, who, id))
            self._take_stream(who.key_id, svc.settings.v2_max_streams_per_key)
        except Exception as exc:
            return error(exc)
        return _CountedStream(events.stream(svc, job, self.events_stream_s), lambda: self._give_stream(who.key_id),
                              media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _take_stream(self, key: str | None, cap: int) -> None:
        if self.open_streams[key] >= cap:
            raise TooManyStreams(f"this API key has {cap} event streams open, as many as it may; close one, or "
                                 "poll GET /api/v2/jobs/{id}", retry_after_s=STREAM_RETRY_AFTER_S)
        self.open_streams[key] += 1

    def _give_stream(self, key: str | None) -> None:
        self.open_streams[key] -= 1
        if self.open_streams[key] <= 0:
            del self.open_streams[key]

    async def health(self, request: Request) -> Response:
        """Whether the store and the queue answer (no key needed; no backend detail shown)."""
        svc = self.services()

        def call() -> tuple[int, dict[str, Any]]:
            report = api.health(svc)
            ok = report["status"] == "ok"
            return (200 if ok else 503), {"status": "healthy" if ok else "degraded", **_public(report)}

        return await answer(call)


class _CountedStream(StreamingResponse):
    """A stream that gives its place back however it ends: finished, timed out, or its client gone."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _public(report: dict[str, Any]) -> dict[str, Any]:
    """The health report without backend error texts (no authentication is asked for it)."""
    return {k: (v if k == "queue_depth" or v == "ok" else "error") for k, v in report.items() if k != "status"}


async def _unknown(request: Request, rest: str) -> Response:
    return json_response(404, envelope("not_found", "no such Comfy API v2 route"))
