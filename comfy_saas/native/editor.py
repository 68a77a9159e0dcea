"""The ComfyUI editor in the browser: ComfyUI's own frontend (the `comfyui-frontend-package` of the `editor`
extra) at `/`, and the routes it needs beyond the native API (each also under `/api/`, as ComfyUI serves
them): `/users`, `/settings`, `/userdata` (per user, in object storage), `/extensions`, `/i18n`,
`/experiment/models`, workflow templates. Queueing, progress and images go through the native API's
`/prompt`, `/ws`, `/history` and `/view`, so a graph queued in the editor runs as a job on the pools.

Registered after the native API's routes and before nothing that matches everything: the frontend's files are
served at their own top-level names (`/assets/...`, `/scripts/...`), so `/v1`, `/api/v2`, `/files`, `/docs`,
`/health` and `/metrics` keep their own answers, 404s and 405s included.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from comfy_saas.errors import BodyTooLarge, ComfySaasError, InvalidInput, NotFound, Unauthorized
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.native import answers, editor_extensions, editor_models
from comfy_saas.native import editor_userdata as userdata
from comfy_saas.native.auth import native_caller
from comfy_saas.native.prefixes import prefixed

log = logging.getLogger(__name__)
INSTALL_HINT = "The ComfyUI editor is not installed on this server: pip install 'comfy-saas[editor]'."
_NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def frontend_root() -> Path | None:
    """The frontend's static folder (the `editor` extra), None when it is not installed."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = (Path(next(iter(spec.submodule_search_locations))) / "static").resolve()
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str | None:
    """The installed frontend's version (what /system_stats may report), None without it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comfyui-frontend-package")
    except PackageNotFoundError:
        return None


def banner(base: str) -> str:
    """What `comfy-saas serve` says about the editor: where it is, or how to get it."""
    if frontend_root() is None:
        return "the ComfyUI editor is not installed (pip install 'comfy-saas[editor]' to open it at /)"
    return f"the ComfyUI editor at {base}/ (frontend {frontend_version()})"


class _Static(StaticFiles):
    """The frontend's files with ComfyUI's types and caching: scripts as JavaScript (module scripts are refused
    under any other type), `.js` and `.css` revalidated on every load (no-cache), as ComfyUI's middleware does."""

    def file_response(self, full_path: Any, stat_result: Any, scope: Any, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        return _typed(str(full_path), response)


def _typed(path: str, response: Response) -> Response:
    if path.endswith((".js", ".mjs")):
        response.headers["content-type"] = "application/javascript; charset=utf-8"
    if path.endswith((".js", ".mjs", ".css")):
        response.headers.setdefault("cache-control", "no-cache")
    return response


def _caller(svc: Services, request: Request) -> Caller:
    """The caller as the native API sees it (Bearer, Basic, ?token= or the /k/<key>/ prefix)."""
    return native_caller(svc.settings, request.headers, request.query_params, prefixed(request.scope))


def _pool(svc: Services, request: Request, caller: Caller | None = None) -> str:
    """The pool the editor works with: a /p/<pool>/ prefix, else the key's first pool, else the default."""
    first = caller.pools[0] if caller is not None and caller.pools else None
    return prefixed(request.scope).get("pool") or first or svc.settings.default_pool


def _error(exc: Exception) -> Response:
    """The native surface's one error shape; anything unexpected is logged before its bare 500."""
    if not isinstance(exc, ComfySaasError):
        log.exception("editor route failed", exc_info=exc)
    status, body, headers = answers.refusal(exc)
    return JSONResponse(body, status, headers)


async def _answer(call: Callable[[], Any]) -> Response:
    """Run a storage call off the event loop; its result as JSON (a Response as is), errors in one place."""
    try:
        result = await run_in_threadpool(call)
    except Exception as exc:
        return _error(exc)
    return result if isinstance(result, Response) else JSONResponse(result)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body: at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _flag(request: Request, name: str, default: str) -> bool:
    """ComfyUI's reading of a query flag: overwrite is on unless "false"; the others only when "true"."""
    value = request.query_params.get(name, default).lower()
    return value != "false" if default == "true" else value == "true"


def mount_editor(app: FastAPI, services: Callable[[], Services]) -> None:
    """Register the editor's routes on `app`, after the native API's own."""
    root = frontend_root()
    for prefix in ("", "/api"):
        _mount_user_routes(app, services, prefix)
        _mount_info_routes(app, services, prefix, root)
    _mount_frontend(app, services, root)


def _mount_user_routes(app: FastAPI, services: Callable[[], Services], prefix: str) -> None:
    @app.get(prefix + "/users", include_in_schema=False)
    async def users(request: Request) -> Response:
        # One user per key: ComfyUI's single-user answer, whose files are already on the server.
        return await _answer(lambda: (_caller(services(), request), {"storage": "server", "migrated": True})[1])

    @app.get(prefix + "/settings", include_in_schema=False)
    async def get_settings(request: Request) -> Response:
        svc = services()
        return await _answer(lambda: userdata.settings(svc, _caller(svc, request)))

    @app.get(prefix + "/settings/{setting_id}", include_in_schema=False)
    async def get_setting(request: Request, setting_id: str) -> Response:
        svc = services()
        return await _answer(lambda: userdata.settings(svc, _caller(svc, request)).get(setting_id))

    @app.post(prefix + "/settings", include_in_schema=False)
    async def post_settings(request: Request) -> Response:
        return await _store_settings(services(), request, None)

    @app.post(prefix + "/settings/{setting_id}", include_in_schema=False)
    async def post_setting(request: Request, setting_id: str) -> Response:
        return await _store_settings(services(), request, setting_id)

    @app.get(prefix + "/userdata", include_in_schema=False)
    async def list_userdata(request: Request) -> Response:
        svc, query = services(), request.query_params
        if not query.get("dir"):
            return _error(InvalidInput("dir: the directory to list is required", field="dir"))
        return await _answer(lambda: userdata.listing(
            svc, _caller(svc, request), query["dir"], _flag(request, "recurse", ""),
            _flag(request, "full_info", ""), _flag(request, "split", "")))

    @app.api_route(prefix + "/userdata/{rest:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
    async def userdata_file(request: Request, rest: str) -> Response:
        return await _userdata_file(services(), request)


async def _store_settings(svc: Services, request: Request, setting_id: str | None) -> Response:
    try:
        caller = await run_in_threadpool(_caller, svc, request)  # before reading a stranger's body
        value = json.loads(await _body(request, svc.settings.limits.max_userdata_bytes) or b"null")
    except ValueError:
        return _error(InvalidInput("body: must be JSON", field="body"))
    except Exception as exc:
        return _error(exc)
    values = value if setting_id is None else {setting_id: value}
    return await _answer(lambda: (userdata.store_settings(svc, caller, values), Response())[1])


def _userdata_names(request: Request) -> tuple[str, str | None]:
    """(file, move destination or None). The frontend sends `workflows%2Fa.json` as one segment, which the
    decoded path would split, so the raw path decides; where a proxy or prefix decoded it, the whole rest is
    the file (or `file/move/dest` for a POST)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    rest = raw.decode("latin-1").split("?")[0].partition("/userdata/")[2]
    parts = rest.split("/")
    if len(parts) == 1:
        return unquote(rest), None
    if len(parts) == 3 and parts[1] == "move" and request.method == "POST":
        return unquote(parts[0]), unquote(parts[2])
    decoded = unquote(rest)
    if request.method == "POST" and "/move/" in decoded:
        source, _, dest = decoded.partition("/move/")
        return source, dest
    return decoded, None


async def _userdata_file(svc: Services, request: Request) -> Response:
    name, dest = _userdata_names(request)
    try:
        caller = await run_in_threadpool(_caller, svc, request)
    except Exception as exc:
        return _error(exc)
    overwrite, full_info = _flag(request, "overwrite", "true"), _flag(request, "full_info", "")
    if dest is not None:
        return await _answer(lambda: userdata.file_info(
            userdata.move(svc, caller, name, dest, overwrite), full_info))
    if request.method == "GET":
        return await _answer(lambda: _file_response(*userdata.read(svc, caller, name)))
    if request.method == "DELETE":
        return await _answer(lambda: (userdata.delete(svc, caller, name), Response(status_code=204))[1])
    try:
        body = await _body(request, svc.settings.limits.max_userdata_bytes)
    except BodyTooLarge as exc:
        return _error(exc)
    return await _answer(lambda: userdata.file_info(userdata.write(svc, caller, name, body, overwrite), full_info))


def _file_response(data: bytes, file: userdata.UserFile) -> Response:
    # User files are arbitrary content: never rendered inline in the editor's origin (stored XSS), except
    # the user's own stylesheet, as ComfyUI does.
    if file.path == "user.css":
        return Response(data, media_type="text/css", headers={"X-Content-Type-Options": "nosniff"})
    kind = mimetypes.guess_type(file.path)[0] or "application/octet-stream"
    if kind in {"text/html", "application/javascript", "text/javascript", "image/svg+xml", "application/xhtml+xml"}:
        kind = "application/octet-stream"
    return Response(data, media_type=kind, headers={"X-Content-Type-Options": "nosniff",
                                                    "Content-Disposition": "attachment"})


def _mount_info_routes(app: FastAPI, services: Callable[[], Services], prefix: str, root: Path | None) -> None:
    @app.get(prefix + "/extensions", include_in_schema=False)
    async def extensions(request: Request) -> Response:
        svc = services()
        return await _answer(lambda: editor_extensions.script_urls(svc, _pool(svc, request, _caller(svc, request)),
                                                                   root))

    @app.get(prefix + "/i18n", include_in_schema=False)
    async def i18n() -> Response:
        return JSONResponse({})  # custom nodes' translations: none are published yet

    @app.get(prefix + "/workflow_templates", include_in_schema=False)
    async def workflow_templates() -> Response:
        return JSONResponse({})  # custom nodes' example workflows: none are published yet

    @app.get(prefix + "/experiment/models", include_in_schema=False)
    async def model_folders(request: Request) -> Response:
        svc = services()
        return await _answer(lambda: (_caller(svc, request), editor_models.folders())[1])

    @app.get(prefix + "/experiment/models/{folder}", include_in_schema=False)
    async def models_in(request: Request, folder: str) -> Response:
        svc = services()
        return await _answer(lambda: editor_models.files(svc, _pool(svc, request, _caller(svc, request)), folder))


def _mount_frontend(app: FastAPI, services: Callable[[], Services], root: Path | None) -> None:
    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        return await _index(services(), request, root)

    @app.get("/templates/{name}", include_in_schema=False)
    async def templates(name: str) -> Response:
        # The core templates ship in ComfyUI's own package, not in our image: the editor shows none.
        if name.startswith("index") and name.endswith(".json"):
            return JSONResponse([])
        return _error(NotFound(f"no template {name!r}"))

    @app.get("/extensions/{path:path}", include_in_schema=False)
    async def extension_file(request: Request, path: str) -> Response:
        svc = services()
        return await _extension_file(svc, root, _pool(svc, request), path)

    if root is None:
        return
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name != "extensions":
            app.mount(f"/{entry.name}", _Static(directory=entry), name=f"editor-{entry.name}")
        elif entry.is_file() and entry.name != "index.html":
            app.add_api_route(f"/{entry.name}", _top_file(entry), methods=["GET"], include_in_schema=False)


def _top_file(path: Path) -> Callable[[], Any]:
    async def serve() -> Response:
        return _typed(path.name, FileResponse(path))
    return serve


async def _index(svc: Services, request: Request, root: Path | None) -> Response:
    if root is None:
        return Response(INSTALL_HINT + "\n", 404, media_type="text/plain")
    try:
        await run_in_threadpool(_caller, svc, request)
    except Unauthorized:
        # A browser asks for the key once (any user name, the key as password) and sends it from then on.
        return Response("Sign in with your API key as the password.\n", 401, media_type="text/plain",
                        headers={"WWW-Authenticate": 'Basic realm="comfy-saas", charset="UTF-8"'})
    return FileResponse(root / "index.html", headers=_NO_CACHE)


async def _extension_file(svc: Services, root: Path | None, pool: str, path: str) -> Response:
    own = None if root is None else (root / "extensions" / path).resolve()  # root is resolved
    if own is not None and own.is_relative_to(root / "extensions") and own.is_file():
        return _typed(own.name, FileResponse(own))
    try:
        data = await run_in_threadpool(editor_extensions.read, svc, pool, path)
    except Exception as exc:
        return _error(exc)
    if data is None:
        return _error(NotFound(f"no extension file {path!r}"))
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return _typed(path, Response(data, media_type=kind))
