"""The Comfy API v2 asset routes: parse, call one function of v2/assets.py, serialize.

Content is served from where the blob is: a local folder streams it (Range: 206/416); S3/R2 answers with a
302 to a fresh presigned URL, or streams it through this server with `?stream=true` (for clients that cannot
follow a redirect), the Range header passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from comfy_saas.backends.objects import LocalStore
from comfy_saas.errors import BackendError, BodyTooLarge, NotFound, RangeNotSatisfiable
from comfy_saas.jobs.request import json_object
from comfy_saas.jobs.services import Services
from comfy_saas.v2 import assets, byte_ranges
from comfy_saas.v2.asset_uploads import UploadReader
from comfy_saas.web.auth import authenticate
from comfy_saas.web.bodies import read_capped

log = logging.getLogger(__name__)
MAX_JSON_BODY = 64 * 1024
FIELDS_SLACK = 1024 * 1024  # what the text parts and the multipart framing may add to the file's size
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
RELAY_CHUNK = 1024 * 1024
FEED_BYTES = 1024 * 1024  # what the upload reader is handed at once


def error_answer(exc: BaseException) -> Response:
    """The contract's error envelope for any exception (the v2 surface's mapping when it is there)."""
    try:
        from comfy_saas.v2.errors import error_response
    except ImportError:  # until the v2 surface's own error module is merged
        status, body, headers = _fallback(exc)
    else:
        status, body, headers = error_response(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _closing(response: Response) -> Response:
    response.headers["Connection"] = "close"
    return response


def _fallback(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    from comfy_saas.errors import ComfySaasError
    from comfy_saas.web.errors_http import error_response

    if not isinstance(exc, ComfySaasError):
        log.error("v2 assets: unhandled error", exc_info=exc)
    status, body, headers = error_response(exc)
    err = body["error"]
    return status, {"error": {"code": err["type"], "message": err["message"], "details": None}}, headers


def add_asset_routes(router: APIRouter, services: Callable[[], Services]) -> None:
    """Register the six asset operations on `router` (full paths, no prefix)."""

    def caller(request: Request) -> Any:
        return authenticate(services().settings, request.headers.get("authorization"))

    @router.post("/api/v2/assets", status_code=201, tags=["assets"], summary="Upload an asset (multipart)")
    async def post_asset(request: Request) -> Response:
        try:
            who, svc = caller(request), services()
            body, new = await _receive(request, svc, who)
            return JSONResponse(body, status_code=201 if new else 200)
        except Exception as exc:
            return error_answer(exc)

    @router.post("/api/v2/assets/from-hash", status_code=201, tags=["assets"], summary="Mint over existing bytes")
    async def post_from_hash(request: Request) -> Response:
        try:
            who, svc = caller(request), services()
            raw = await read_capped(request, MAX_JSON_BODY)
        except Exception as exc:  # the rest of an oversized body is never read: the connection goes with it
            return _closing(error_answer(exc))
        try:
            body, minted = await run_in_threadpool(
                assets.from_hash, svc, who, json_object(raw, svc.settings.limits))
            return JSONResponse(body, status_code=201 if minted else 200)
        except Exception as exc:
            return error_answer(exc)

    @router.head("/api/v2/assets/by-hash/{hash}", tags=["assets"], summary="Whether the caller has this blob")
    def head_by_hash(hash: str, request: Request) -> Response:
        try:
            found = assets.blob_usable(services(), caller(request), hash)
            return Response(status_code=200 if found else 404)
        except Exception as exc:
            return error_answer(exc)

    @router.get("/api/v2/assets/{id}", tags=["assets"], summary="Asset metadata")
    def get_asset(id: str, request: Request) -> Response:
        try:
            return JSONResponse(assets.get_asset(services(), caller(request), id))
        except Exception as exc:
            return error_answer(exc)

    @router.get("/api/v2/assets/{id}/content", tags=["assets"], summary="Asset bytes (Range supported)")
    def get_content(id: str, request: Request, stream: bool = False) -> Response:
        try:
            svc = services()
            return _serve(svc, assets.content(svc, caller(request), id), request.headers.get("range"), stream)
        except Exception as exc:
            return error_answer(exc)

    @router.delete("/api/v2/assets/{id}", status_code=204, tags=["assets"], summary="Delete an asset record")
    def delete_asset(id: str, request: Request) -> Response:
        try:
            assets.delete_asset(services(), caller(request), id)
            return Response(status_code=204)
        except Exception as exc:
            return error_answer(exc)


async def _receive(request: Request, svc: Services, who: Any) -> tuple[dict[str, Any], bool]:
    """Stream the multipart body through the reader (hashing, spooling, capping), then store it."""
    cap = svc.settings.limits.max_asset_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + FIELDS_SLACK:
        raise BodyTooLarge(f"file: larger than the {cap} byte limit for one asset", field="file")
    reader = UploadReader(request.headers.get("content-type"), cap)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= FEED_BYTES:  # hashing and spooling block: in the threadpool, a batch at a time
                await run_in_threadpool(reader.feed, bytes(pending))
                pending.clear()
        await run_in_threadpool(reader.feed, bytes(pending))
        received = await run_in_threadpool(reader.finish)
        return await run_in_threadpool(assets.store_upload, svc, who, received)
    finally:
        await run_in_threadpool(reader.discard)


def _serve(svc: Services, content: assets.Content, byte_range: str | None, stream: bool) -> Response:
    headers = {**SAFE_HEADERS, "Cache-Control": "private, max-age=0"}
    if isinstance(svc.objects, LocalStore):
        path = svc.objects.path(content.key)
        if not path.is_file():
            raise NotFound("no such asset")
        return _FileSpan(path, byte_ranges.requested(byte_range, path.stat().st_size), media_type=content.content_type,
                         headers=headers, filename=content.file_name, content_disposition_type="inline")
    url = svc.objects.url(content.key)
    if not stream:
        return RedirectResponse(url, status_code=302, headers=headers)
    return _relay(url, byte_ranges.requested(byte_range, content.size), content, headers)


class _FileSpan(FileResponse):
    """A file, or the one byte range of it we decided to serve: Starlette's own Range handling sees only that
    range (or none), so a header we ignore never becomes its plain-text 400."""

    def __init__(self, path: Path, span: tuple[int, int] | None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.span = span

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kept = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
        if self.span is not None:
            kept.append((b"range", byte_ranges.header_value(self.span).encode()))
        await super().__call__({**scope, "headers": kept}, receive, send)


def _relay(url: str, span: tuple[int, int] | None, content: assets.Content, headers: dict[str, str]) -> Response:
    """Stream the object from its presigned URL, passing the range on and its answer back."""
    import urllib.error
    import urllib.request

    asked = {"Range": byte_ranges.header_value(span)} if span is not None else {}
    try:
        upstream = urllib.request.urlopen(urllib.request.Request(url, headers=asked), timeout=30)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the stored object is shorter than its record says
            raise RangeNotSatisfiable("Range: outside the content", content.size) from None
        raise BackendError(f"object storage answered {exc.code}") from None
    except OSError as exc:
        raise BackendError(f"object storage is unreachable: {exc}") from None
    for name in ("Content-Length", "Content-Range", "Accept-Ranges"):
        if upstream.headers.get(name):
            headers[name] = upstream.headers[name]

    def chunks() -> Any:
        with upstream:
            yield from iter(lambda: upstream.read(RELAY_CHUNK), b"")

    return StreamingResponse(chunks(), status_code=upstream.status, media_type=content.content_type, headers=headers)
