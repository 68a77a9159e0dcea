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
from comfy_saas.jobs import templates
from comfy_saas.jobs.model import TERMINAL_STATUSES
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.templates import TemplateRequest
from comfy_saas.jobs.views import job_view
from comfy_saas.runner.monitor import PROGRESS_WRITE_S
from comfy_saas.web import fast_lane, params, waiting
from comfy_saas.web.auth import authenticate, parse_api_keys
from comfy_saas.web.bodies import read_capped
from comfy_saas.web.errors_http import error_response
from comfy_saas.web.lingering import LingeringResponse, declared_length
from comfy_saas.web.offload import store_read, submission

log = logging.getLogger(__name__)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or {})


def _error(exc: Exception) -> JSONResponse:
    if not isinstance(exc, ComfySaasError):
        log.exception("unhandled error")
    _let_frames_go(exc)
    return _json(*error_response(exc))


async def respond(call: Callable[[], tuple[int, dict[str, Any]]]) -> JSONResponse:
    """Run a blocking operation in the threadpool; any error becomes the one error shape."""
    try:
        status, body = await run_in_threadpool(call)
    except Exception as exc:
        return _error(exc)
    return _json(status, body)


async def respond_waiting(svc: Services, request: Request, call: Callable[[], tuple[int, dict[str, Any]]],
                          body: bytes | bytearray | None = None) -> JSONResponse:
    """A submission (of `body`, when it may run on the event loop: web/offload.py); with ?wait=N the answer
    waits for the job: 200 when it ended within N s, else 202."""
    try:
        wait_s = waiting.parse_wait(request.query_params.get("wait"), svc.settings.max_wait_s)
        status, view = await (run_in_threadpool(call) if body is None else submission(body, call))
    except Exception as exc:
        return _error(exc)
    if wait_s is None:
        return _json(status, view)
    waited, finished = await waiting.until_finished(svc, view["id"], wait_s)
    return _json(200 if finished else 202, waited or view)


def _let_frames_go(exc: BaseException | None) -> None:
    """Drop the tracebacks of an answered error. They hold every frame the error passed through, and so
    the request body; the awaiting frames form a reference cycle that only the garbage collector frees,
    which kept a few 100 MB bodies alive long after their 4xx had been sent."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__context__


def _caller(svc: Services, request: Request) -> api.Caller:
    return authenticate(svc.settings, request.headers.get("authorization"))


async def _body(svc: Services, request: Request) -> bytearray:
    """The body, streamed into one buffer under the size cap (a declared size over it is refused unread)."""
    return await read_capped(request, svc.settings.limits.max_body_bytes)


def _refused_unread(svc: Services, request: Request, exc: Exception) -> JSONResponse:
    """The answer to a body refused before it was read: sent at once, then the rest of the body is read and
    dropped (bounded) before the connection closes, so a client still sending receives it."""
    status, body, headers = error_response(exc)
    limits = svc.settings.limits
    return LingeringResponse(body, status, headers, declared=declared_length(request.headers.get("content-length")),
                             drain_bytes=limits.refused_drain_bytes, drain_s=limits.refused_drain_s)


async def handle_submit(svc: Services, request: Request) -> JSONResponse:
    """Authenticate from the headers before a byte of the body is read, so a caller without a valid key
    costs no memory however much it sends; then stream the body under the size cap."""
    try:
        caller = _caller(svc, request)
        body = await _body(svc, request)
    except ComfySaasError as exc:
        return _refused_unread(svc, request, exc)

    def call() -> tuple[int, dict]:
        view, created = api.submit_job(svc, caller, body)
        return (201 if created else 200), view

    return await respond_waiting(svc, request, call, body)


def _include_workflow(raw: str | None) -> bool:
    parts = {p.strip() for p in (raw or "").split(",") if p.strip()}
    if parts - {"workflow"}:
        raise InvalidInput("include: the only value is 'workflow'", field="include")
    return "workflow" in parts


async def handle_get(svc: Services, request: Request, job_id: str | None) -> JSONResponse:
    """The job; ?wait=N long-polls until it ends (at most N s); ?include=workflow adds the workflow it ran."""
    q, job_id = request.query_params, job_id or ""
    try:
        wait_s = waiting.parse_wait(q.get("wait"), svc.settings.max_wait_s)
        with_workflow = _include_workflow(q.get("include"))
        view = await store_read(api.get_job, svc, _caller(svc, request), job_id)
        if wait_s and view["status"] not in TERMINAL_STATUSES:
            view = (await waiting.until_finished(svc, job_id, wait_s))[0] or view
        if with_workflow:
            view["workflow"] = await run_in_threadpool(api.job_workflow, svc, job_id)
    except Exception as exc:
        return _error(exc)
    return _json(200, view)


async def handle_list(svc: Services, request: Request) -> JSONResponse:
    q = request.query_params
    return await respond(lambda: (200, api.list_jobs(svc, _caller(svc, request), status=q.get("status"),
                                                     cursor=q.get("cursor"), limit=q.get("limit"),
                                                     user_id=q.get("user_id"))))


async def handle_cancel(svc: Services, request: Request, job_id: str | None) -> JSONResponse:
    return await respond(lambda: (200, api.cancel_job(svc, _caller(svc, request), job_id or "")))


# --- workflow templates -----------------------------------------------------------------------------------


async def _with_body(svc: Services, request: Request, call: Callable[[bytes], tuple[int, dict[str, Any]]],
                     wait: bool = False) -> JSONResponse:
    try:
        body = await _body(svc, request)
    except BodyTooLarge as exc:
        return _refused_unread(svc, request, exc)
    if wait:
        return await respond_waiting(svc, request, lambda: call(body))
    return await respond(lambda: call(body))


async def handle_template_put(svc: Services, request: Request, name: str | None) -> JSONResponse:
    def call(body: bytes) -> tuple[int, dict]:
        view, created = templates.put_template(svc, _caller(svc, request), name or "", body)
        return (201 if created else 200), view

    return await _with_body(svc, request, call)


async def handle_template_get(svc: Services, request: Request, name: str | None) -> JSONResponse:
    return await respond(lambda: (200, templates.get_template(svc, _caller(svc, request), name or "")))


async def handle_template_list(svc: Services, request: Request) -> JSONResponse:
    return await respond(lambda: (200, templates.list_templates(svc, _caller(svc, request))))


async def handle_template_delete(svc: Services, request: Request, name: str | None) -> JSONResponse:
    return await respond(lambda: (200, templates.delete_template(svc, _caller(svc, request), name or "")))


async def handle_template_run(svc: Services, request: Request, name: str | None) -> JSONResponse:
    """A job from a template; ?wait=N as for POST /v1/jobs."""
    def call(body: bytes) -> tuple[int, dict]:
        view, created = templates.submit_from_template(svc, _caller(svc, request), name or "", body)
        return (201 if created else 200), view

    return await _with_body(svc, request, call, wait=True)
async def handle_models(svc: Services, request: Request) -> JSONResponse:
    """The cached model files (operators only)."""
    return await respond(lambda: (200, api.list_models(svc, _caller(svc, request))))


async def handle_model_delete(svc: Services, request: Request, sha256: str | None) -> JSONResponse:
    """Remove one cached model file; 409 while a running job uses it (operators only)."""
    return await respond(lambda: (200, api.delete_model(svc, _caller(svc, request), sha256 or "")))


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
                        poll_s: float = PROGRESS_WRITE_S) -> Response:
    """Server-Sent Events: every progress event (id = its sequence number), then the terminal event.
    Resume with Last-Event-ID. After max_s the stream asks the client to reconnect (Modal's web limit).
    A watcher reads the store as often as a worker writes progress, one round trip (two calls) a poll."""
    try:  # the same visibility rules as GET
        await run_in_threadpool(lambda: api.visible_job(svc, _caller(svc, request), job_id or ""))
        after = params.last_event_id(request.headers.get("last-event-id"), request.query_params.get("last_event_id"))
    except Exception as exc:
        if not isinstance(exc, ComfySaasError):
            log.exception("unhandled error")
        return _json(*error_response(exc))
    return StreamingResponse(_event_stream(svc, job_id or "", after, max_s, poll_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(svc: Services, job_id: str, after: int, max_s: float, poll_s: float
                        ) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    yield "retry: 1000\n\n"
    while True:
        job, events = await run_in_threadpool(svc.store.watch, job_id, after)
        if job is None or job.terminal:  # events written just before the end may postdate that read
            events = await run_in_threadpool(svc.store.progress_events, job_id, after)
        for event in events:
            yield f"id: {event['seq']}\nevent: progress\ndata: {json.dumps(event)}\n\n"
            after = event["seq"]
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
    at, signature = params.link_expiry(expires), params.link_signature(sig)
    if not isinstance(store, LocalStore) or at is None or signature is None or not store.verify(key, at, signature):
        raise NotFound("no such file, or its link expired")
    path = store.path(key)
    if not path.is_file():
        raise NotFound("no such file")
    return FileResponse(path)


def create_app(svc: Services) -> FastAPI:
    """The local server: every operation of web/routes.py at its REST path, signed /files, OpenAPI at /docs."""
    from comfy_saas.web import routes

    parse_api_keys(svc.settings.api_keys)  # a malformed COMFY_API_KEYS stops the server before it listens
    app = FastAPI(title="comfy-saas", version="0.1.0", description="ComfyUI jobs: submit, watch, cancel, collect.")
    for route in routes.ROUTES:
        handler = routes.endpoint(route, lambda: svc, "local")
        extra = routes.body_doc(route.body) if route.body else None
        for method, path in ((route.method, route.path), *route.aliases):
            app.add_api_route(path, handler, methods=[method], openapi_extra=extra)
        if route.name in routes.HOT:
            fast_lane.offer(app, [fast_lane.Lane(route.method, route.path, handler)])

    @app.get("/files/{key:path}", summary="Download an output through a signed link")
    async def files(key: str, expires: str = "", sig: str = "") -> Any:
        try:
            return await run_in_threadpool(_file_response, svc, key, expires, sig)
        except Exception as exc:
            return _json(*error_response(exc))

    from comfy_saas.web.surfaces import mount_surfaces

    mount_surfaces(app, lambda: svc)
    fast_lane.install(app)
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
        components["TemplateRequest"] = TemplateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components["TemplateJobRequest"] = _template_job_schema(request)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _template_job_schema(job_request: dict[str, Any]) -> dict[str, Any]:
    """A job from a template takes the job options of JobRequest, with `inputs` instead of `workflow`."""
    props = {k: v for k, v in job_request["properties"].items() if k != "workflow"}
    props["inputs"] = {"type": "object", "description": "values by input name (see the template's schema)"}
    return {"title": "TemplateJobRequest", "type": "object", "properties": props, "additionalProperties": False}
