"""ComfyUI's native API on a FastAPI app: every route at ComfyUI's path and again under /api/ (as ComfyUI serves
them), the newer jobs API at /api/jobs, and the /k/<key>/ and /p/<pool>/ prefixes in front of any of them.
`mount` leaves `/` and the editor's routes to `mount_editor`, which is called after it."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BodyTooLarge, ComfySaasError, InvalidInput, NotFound
from comfy_saas.inputs import loads
from comfy_saas.jobs import operations
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.native import answers, catalogue, control, files, history, prompts, uploads
from comfy_saas.native.auth import native_caller, owner_of
from comfy_saas.native.history import HistoryCache
from comfy_saas.native.prefixes import PrefixMiddleware, prefixed
from comfy_saas.native.ws import SocketOptions, serve_socket
from comfy_saas.web import fast_lane
from comfy_saas.web.fast_lane import Lane
from comfy_saas.web.offload import store_read, submission

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Native:
    """The surface as mounted: how to get the services, this process's history cache, and the socket's options
    (feature flags and greetings another module may extend)."""

    services: Callable[[], Services]
    cache: HistoryCache = field(default_factory=HistoryCache)
    socket: SocketOptions = field(default_factory=SocketOptions)
    open_sockets: Counter[str] = field(default_factory=Counter)  # per key id, in this process


@dataclass(frozen=True)
class Upload:
    """An upload's file (read whole: it is under the media cap) and the form's other fields."""

    filename: str
    content_type: str | None
    data: bytes
    fields: dict[str, str]


@dataclass(frozen=True)
class Call:
    """One authenticated request: the services, the caller, whose native state it is, and the pool prefix."""

    svc: Services
    caller: Caller
    owner: str
    pool: str | None
    request: Request


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or {})


def _who(native: Native, request: Request | WebSocket) -> Call:
    svc = native.services()
    found = prefixed(request.scope)
    caller = native_caller(svc.settings, request.headers, request.query_params, found)
    return Call(svc, caller, owner_of(caller), found.get("pool"), request)  # type: ignore[arg-type]


def _route(native: Native, work: Callable[[Call], Awaitable[Response]],
           refuse: Callable[[BaseException], tuple[int, Any, dict[str, str]]] = answers.refusal) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            return await work(_who(native, request))
        except Exception as exc:  # every error becomes an answer; unexpected ones are logged
            if not isinstance(exc, ComfySaasError):
                log.exception("native API: unhandled error")
            return _json(*refuse(exc))
    return handler


def _blocking(native: Native, fn: Callable[[Call], Any], status: int = 200, read: bool = False) -> Handler:
    """A route whose work is blocking store calls (`read`: reads of the store alone, see web/offload.py),
    answered as JSON (None: an empty 200, as ComfyUI's POSTs)."""
    async def work(call: Call) -> Response:
        body = await (store_read(fn, call) if read else run_in_threadpool(fn, call))
        return Response(status_code=200) if body is None else _json(status, body)
    return _route(native, work)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
    return bytes(body)


async def _json_body(call: Call) -> dict[str, Any]:
    """A small JSON object body; an empty body is {} (ComfyUI's POSTs accept none)."""
    raw = await _body(call.request, 1024 * 1024)
    if not raw.strip():
        return {}
    body = loads(raw, call.svc.settings.limits.max_json_depth)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    return body


# --- the routes ----------------------------------------------------------------------------------------------


def _post_prompt(native: Native) -> Handler:
    async def work(call: Call) -> Response:
        raw = await _body(call.request, call.svc.settings.limits.max_body_bytes)
        answer = await submission(raw, prompts.submit_prompt, call.svc, call.caller, call.owner, raw, call.pool)
        native.cache.forget(call.owner)
        return _json(200, answer)
    return _route(native, work, answers.prompt_refusal)


def _stopping(native: Native, fn: Callable[..., Any]) -> Handler:
    """POST /interrupt and POST /queue: a JSON body, then cancels; an empty 200."""
    async def work(call: Call) -> Response:
        body = await _json_body(call)
        await run_in_threadpool(fn, call.svc, native.cache, call.caller, call.owner, body)
        native.cache.forget(call.owner)
        return Response(status_code=200)
    return _route(native, work)


def _view(native: Native) -> Handler:
    async def work(call: Call) -> Response:
        q = call.request.query_params
        found = await run_in_threadpool(files.find, call.svc, call.owner, q.get("filename", ""),
                                        q.get("subfolder", ""), q.get("type", "output"))
        media_type, headers = files.served_as(found)
        path = files.local_path(call.svc, found)
        if path is not None:
            return FileResponse(path, media_type=media_type, headers=headers)
        size, chunks = await files.open_stream(call.svc, found)
        if size is not None:
            headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type=media_type, headers=headers)
    return _route(native, work)


async def _capped(request: Request, limit: int, limit_named: int) -> AsyncIterator[bytes]:
    """The body as it arrives, refused (413) once it passes `limit`: nothing past the cap is spooled."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"image: the upload is larger than {limit_named} bytes", field="image")
        yield chunk


async def _upload_form(call: Call) -> Upload:
    """The multipart form of an upload, read under the media cap (plus room for the form's other fields)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    named = call.svc.settings.limits.max_media_bytes
    limit = named + 64 * 1024
    declared = call.request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"image: the upload is larger than {named} bytes", field="image")
    if not call.request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidInput("image: send the file as multipart/form-data field 'image'", field="image")
    try:
        form = await MultiPartParser(call.request.headers, _capped(call.request, limit, named), max_files=1,
                                     max_fields=16, max_part_size=64 * 1024).parse()
    except MultiPartException as exc:
        raise InvalidInput(f"image: the multipart body is malformed ({exc.message})", field="image") from None
    try:
        image = form.get("image")
        if image is None or isinstance(image, str):
            raise InvalidInput("image: send the file as the multipart field 'image'", field="image")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return Upload(image.filename or "image.png", image.content_type, await image.read(), fields)
    finally:
        await form.close()


def _upload(native: Native, mask: bool) -> Handler:
    async def work(call: Call) -> Response:
        up = await _upload_form(call)
        data = up.data
        if mask:
            data = await run_in_threadpool(_masked, call, up.fields.get("original_ref", ""), data)
        overwrite = up.fields.get("overwrite", "").lower() in ("true", "1")
        answer = await run_in_threadpool(uploads.store_upload, call.svc, call.owner, up.filename,
                                         up.fields.get("subfolder", ""), data, overwrite, up.content_type)
        native.cache.forget(call.owner)  # its /object_info lists the new name at once
        return _json(200, answer)
    return _route(native, work)


def _masked(call: Call, original_ref: str, mask: bytes) -> bytes:
    try:
        ref = json.loads(original_ref)
        where = [ref["filename"], ref.get("subfolder", ""), ref.get("type", "input")]
    except (ValueError, KeyError, TypeError, AttributeError):
        where = []
    if not where or not all(isinstance(part, str) for part in where):
        raise InvalidInput("original_ref must be JSON {filename, subfolder, type} of strings", field="original_ref")
    return uploads.with_mask(files.read(call.svc, files.find(call.svc, call.owner, *where)), mask)


def _nodes(call: Call) -> dict[str, Any] | None:
    return operations.catalogue(call.svc, call.pool, needed=True)


def _uploads(native: Native, call: Call) -> list[str]:
    """The owner's upload names, listed at most once per UPLOADS_TTL_S (a listing is a full prefix scan)."""
    key = (call.owner, "uploads", 0)
    if (found := native.cache.listing(key)) is None:
        found = uploads.listing(call.svc, call.owner)
        native.cache.keep_listing(key, found, history.UPLOADS_TTL_S)
    return found


def _object_info(native: Native) -> Handler:
    def fn(call: Call) -> dict[str, Any]:
        nodes, listed = run_all([lambda: _nodes(call), lambda: _uploads(native, call)])
        return catalogue.object_info(nodes, call.request.path_params.get("node_class"), listed)
    return _blocking(native, fn)


def _models(native: Native) -> Handler:
    async def work(call: Call) -> Response:
        folder = call.request.path_params.get("folder")
        if folder is None:
            return _json(200, catalogue.folders())
        if folder not in catalogue.folders():
            raise NotFound(f"no models folder {folder!r}")
        return _json(200, catalogue.folder_files(await run_in_threadpool(_nodes, call), folder))
    return _route(native, work)


def _pool(call: Call) -> str:
    return call.pool or (call.caller.pools[0] if call.caller.pools else call.svc.settings.default_pool)


def _api_job(native: Native) -> Handler:
    def fn(call: Call) -> Any:
        found = history.job(call.svc, native.cache, call.owner, call.request.path_params["job_id"])
        if found is None:
            raise NotFound("Job not found")
        return found
    return _blocking(native, fn)


def _cancel_many(native: Native) -> Handler:
    async def work(call: Call) -> Response:
        body = await _json_body(call)
        cancelled = await run_in_threadpool(control.cancel_many, call.svc, call.caller, call.owner, body)
        native.cache.forget(call.owner)
        return _json(200, {"cancelled": cancelled})
    return _route(native, work)


def router(native: Native) -> tuple[APIRouter, list[Lane]]:
    """The routes ComfyUI serves both at its paths and under /api/; the ones a polling client calls over and
    over, for web/fast_lane.py (at ComfyUI's paths)."""
    r = APIRouter(include_in_schema=False)
    cache = native.cache
    get = {
        "/prompt": _blocking(native, lambda c: history.queue_info(c.svc, cache, c.owner)),
        "/queue": _blocking(native, lambda c: history.queue(c.svc, cache, c.owner)),
        "/history": _blocking(native, lambda c: history.history(
            c.svc, cache, c.owner, history.max_items(c.request.query_params.get("max_items")))),
        "/history/{prompt_id}": _blocking(native, lambda c: history.history_of(
            c.svc, cache, c.owner, c.request.path_params["prompt_id"]), read=True),
        "/view": _view(native),
        "/object_info": _object_info(native),
        "/object_info/{node_class}": _object_info(native),
        "/system_stats": _blocking(native, lambda c: catalogue.system_stats(c.svc.settings, _pool(c))),
        "/features": _blocking(native, lambda c: {**native.socket.feature_flags,
                                                  "max_upload_size": c.svc.settings.limits.max_media_bytes}),
        "/models": _models(native),
        "/models/{folder}": _models(native),
        "/embeddings": _blocking(native, lambda c: []),
    }
    post = {
        "/prompt": _post_prompt(native),
        "/queue": _stopping(native, control.edit_queue),
        "/interrupt": _stopping(native, control.interrupt),
        "/history": _blocking(native, lambda c: None),  # our history is the jobs' own: nothing to clear
        "/upload/image": _upload(native, mask=False),
        "/upload/mask": _upload(native, mask=True),
    }
    for path, handler in get.items():
        r.add_api_route(path, handler, methods=["GET"])
    for path, handler in post.items():
        r.add_api_route(path, handler, methods=["POST"])
    r.add_api_websocket_route("/ws", _socket(native))
    hot = [Lane("GET", "/history/{prompt_id}", _by_request(get["/history/{prompt_id}"])),
           Lane("POST", "/prompt", _by_request(post["/prompt"]))]
    return r, hot


def _by_request(handler: Handler) -> fast_lane.Handler:
    """A handler that reads its path parameters from the request, as a lane calls one (with them as keywords)."""
    async def lane(request: Request, **_: str) -> Response:
        return await handler(request)
    return lane


def jobs_router(native: Native) -> APIRouter:
    """ComfyUI's newer jobs API, which it serves under /api/ only."""
    r = APIRouter(include_in_schema=False)
    r.add_api_route("/jobs", _blocking(native, lambda c: history.jobs(c.svc, native.cache, c.owner,
                                                                       dict(c.request.query_params))),
                    methods=["GET"])
    r.add_api_route("/jobs/cancel", _cancel_many(native), methods=["POST"])
    r.add_api_route("/jobs/{job_id}", _api_job(native), methods=["GET"])
    r.add_api_route("/jobs/{job_id}/cancel", _blocking(native, lambda c: {"cancelled": control.cancel(
        c.svc, c.caller, c.owner, c.request.path_params["job_id"])}), methods=["POST"])
    return r


def _socket(native: Native) -> Callable[[WebSocket], Awaitable[None]]:
    async def socket(ws: WebSocket) -> None:
        try:
            call = _who(native, ws)
        except ComfySaasError:
            await ws.close(code=1008)  # before accepting: the handshake is refused (403)
            return
        await ws.accept()
        key, cap = call.caller.key_id, call.svc.settings.native_max_sockets_per_key
        if native.open_sockets[key] >= cap:
            await ws.close(code=1013, reason=f"too many sockets for this API key (at most {cap}); close one")
            return
        native.open_sockets[key] += 1
        client_id = ws.query_params.get("clientId") or None
        try:
            await serve_socket(ws, call.svc, call.owner, client_id[:256] if client_id else None, native.socket,
                               call.svc.settings.native_socket_max_s)
        finally:
            native.open_sockets[key] -= 1
            if native.open_sockets[key] <= 0:
                del native.open_sockets[key]
    return socket


def mount(app: FastAPI, services: Callable[[], Services]) -> Native:
    """Register the native API on `app` (and the path prefixes); the surface, for mount_editor to extend."""
    native = Native(services)
    app.state.native = native
    native_routes, hot = router(native)
    app.include_router(native_routes)
    app.include_router(native_routes, prefix="/api")
    fast_lane.offer(app, [Lane(lane.method, prefix + lane.path, lane.handler) for prefix in ("", "/api")
                          for lane in hot])
    app.include_router(jobs_router(native), prefix="/api")
    app.add_middleware(PrefixMiddleware)
    return native
