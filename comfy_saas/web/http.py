"""HTTP for the API: read the request, call one operation from jobs/operations.py, serialize.

The same handlers serve the local server's routes (`create_app`) and Modal's per-operation web
endpoints (app.py). Store calls are blocking, so they run in the threadpool, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfy_saas.backends.objects import LocalStore
from comfy_saas.errors import BodyTooLarge, ComfySaasError, InvalidInput, NotFound
from comfy_saas.jobs import operations as api
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.views import job_view
from comfy_saas.web.auth import authenticate
from comfy_saas.web.errors_http import error_response

log = logging.getLogger(__name__)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or {})


async def respond(call: Callable[[], tuple[int, dict[str, Any]]]) -> JSONResponse:
    """Run a blocking operation in the threadpool; any error becomes the one error shape."""
    try:
        status, body = await run_in_threadpool(call)
    except Exception as exc:
        if not isinstance(exc, ComfySaasError):
            log.exception("unhandled error")
        return _json(*error_response(exc))
    return _json(status, body)


def _caller(svc: Services, request: Request) -> api.Caller:
    return authenticate(svc.settings, request.headers.get("authorization"))


async def _body(svc: Services, request: Request) -> bytes:
    limit = svc.settings.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 20
    if not raw.isdigit():
        raise InvalidInput("limit must be a whole number", field="limit")
    return int(raw)


async def handle_submit(svc: Services, request: Request) -> JSONResponse:
    try:
        body = await _body(svc, request)
    except BodyTooLarge as exc:
        return _json(*error_response(exc))

    def call() -> tuple[int, dict]:
        view, created = api.submit_job(svc, _caller(svc, request), body)
        return (201 if created else 200), view

    return await respond(call)


async def handle_get(svc: Services, request: Request, job_id: str | None) -> JSONResponse:
    return await respond(lambda: (200, api.get_job(svc, _caller(svc, request), job_id or "")))


async def handle_list(svc: Services, request: Request) -> JSONResponse:
    q = request.query_params
    return await respond(lambda: (200, api.list_jobs(svc, _caller(svc, request), status=q.get("status"),
                                                     cursor=q.get("cursor"), limit=_limit(q.get("limit")),
                                                     user_id=q.get("user_id"))))


async def handle_cancel(svc: Services, request: Request, job_id: str | None) -> JSONResponse:
    return await respond(lambda: (200, api.cancel_job(svc, _caller(svc, request), job_id or "")))


async def handle_metrics(svc: Services, request: Request) -> Response:
    """Prometheus text; only an API key that is not bound to a user may read it."""
    from comfy_saas.web import metrics

    def render() -> str:
        if _caller(svc, request).user_id is not None:
            raise NotFound("no such page")
        return metrics.render(svc)

    try:
        text = await run_in_threadpool(render)
    except Exception as exc:
        return _json(*error_response(exc))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def handle_events(svc: Services, request: Request, job_id: str | None, max_s: float = 3600.0,
                        poll_s: float = 0.25) -> Response:
    """Server-Sent Events: every progress event (id = its sequence number), then the terminal event.
    Resume with Last-Event-ID. After max_s the stream asks the client to reconnect (Modal's web limit)."""
    try:  # the same visibility rules as GET
        await run_in_threadpool(lambda: api.get_job(svc, _caller(svc, request), job_id or ""))
    except Exception as exc:
        return _json(*error_response(exc))
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    after = int(last) if last.isdigit() else 0
    return StreamingResponse(_event_stream(svc, job_id or "", after, max_s, poll_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(svc: Services, job_id: str, after: int, max_s: float, poll_s: float
                        ) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    yield "retry: 1000\n\n"
    while True:
        events = await run_in_threadpool(svc.store.progress_events, job_id, after)
        for event in events:
            yield f"id: {event['seq']}\nevent: progress\ndata: {json.dumps(event)}\n\n"
            after = event["seq"]
        job = await run_in_threadpool(svc.store.get, job_id)
        if job is None or job.terminal:
            view = await run_in_threadpool(job_view, svc, job) if job is not None else {"id": job_id}
            yield f"id: end\nevent: {view.get('status', 'gone')}\ndata: {json.dumps(view)}\n\n"
            return
        if loop.time() > deadline:
            yield ": time limit reached; reconnect with Last-Event-ID\n\n"
            return
        await asyncio.sleep(poll_s)


async def handle_health(svc: Services) -> JSONResponse:
    def call() -> tuple[int, dict]:
        report = api.health(svc)
        return (200 if report["status"] == "ok" else 503), report

    return await respond(call)


def _file_response(svc: Services, key: str, expires: str, sig: str) -> FileResponse:
    store = svc.objects
    if not isinstance(store, LocalStore) or not expires.isdigit() or not store.verify(key, int(expires), sig):
        raise NotFound("no such file, or its link expired")
    path = store.path(key)
    if not path.is_file():
        raise NotFound("no such file")
    return FileResponse(path)


def create_app(svc: Services) -> FastAPI:
    """The local server: every operation of web/routes.py at its REST path, signed /files, OpenAPI at /docs."""
    from comfy_saas.web import routes

    app = FastAPI(title="comfy-saas", version="0.1.0", description="ComfyUI jobs: submit, watch, cancel, collect.")
    for route in routes.ROUTES:
        handler = routes.endpoint(route, lambda: svc, "local")
        extra = routes.body_doc() if route.body else None
        for method, path in ((route.method, route.path), *route.aliases):
            app.add_api_route(path, handler, methods=[method], openapi_extra=extra)

    @app.get("/files/{key:path}", include_in_schema=False)
    async def files(key: str, expires: str = "", sig: str = "") -> Any:
        try:
            return await run_in_threadpool(_file_response, svc, key, expires, sig)
        except Exception as exc:
            return _json(*error_response(exc))

    _install_error_shape(app)
    _install_schema(app)
    return app


def _install_error_shape(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(exc.status_code, {"error": {"type": kind, "message": str(exc.detail)}})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": ["request"], "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0])
        return _json(422, {"error": {"type": "invalid_input", "message": f"{field}: {err['msg']}", "field": field}})


def _install_schema(app: FastAPI) -> None:
    """Publish JobRequest (and the models it uses) under components/schemas for the docs."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        request = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["JobRequest"] = request
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
