"""GET /view: the bytes of an output or an upload, answered directly (some tools cannot follow a redirect to a
signed URL), with the content type and file name ComfyUI gives."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass

from comfy_saas.backends.objects import LocalStore
from comfy_saas.errors import BackendError, InvalidInput, NotFound
from comfy_saas.jobs import keys
from comfy_saas.jobs.services import Services
from comfy_saas.native import records, uploads

STREAM_CHUNK_BYTES = 256 * 1024
STREAM_READ_S = 60.0


@dataclass(frozen=True)
class Found:
    key: str
    filename: str
    content_type: str


def _output(svc: Services, owner: str, filename: str, subfolder: str) -> Found:
    prompt_id, _, node_id = subfolder.partition("/")
    prompt = records.one(svc, owner, prompt_id) if 0 < len(prompt_id) <= 64 else None
    job = prompt.job if prompt is not None else None
    out = next((o for o in (job.outputs if job else []) if o.filename == filename and o.node_id == node_id), None)
    if out is None:
        raise NotFound("no such file")
    return Found(out.key, out.filename, out.content_type)


def find(svc: Services, owner: str, filename: str, subfolder: str, kind: str) -> Found:
    """Where the file /history or /upload named lives; NotFound for anything not the caller's."""
    if not filename or filename.startswith("/") or ".." in filename:
        raise InvalidInput("filename must be a plain file name", field="filename")
    if kind in ("output", "temp"):
        return _output(svc, owner, filename, subfolder)
    if kind != "input":
        raise InvalidInput("type must be output, input or temp", field="type")
    key = keys.native_upload(owner, uploads.check_subfolder(subfolder), uploads.check_name(filename))
    return Found(key, filename, mimetypes.guess_type(filename)[0] or "application/octet-stream")


def _inline(content_type: str) -> bool:
    """Media a browser shows without running anything (SVG is a document that can carry script)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith(("image/", "video/", "audio/")) and "svg" not in kind and "xml" not in kind


def served_as(found: Found) -> tuple[str, dict[str, str]]:
    """(content type, headers) /view answers with: media inline, anything else (HTML, SVG, ...) as a download
    of opaque bytes, and always sandboxed and unsniffed, so an upload never runs as a page on this origin."""
    safe = found.filename.replace('"', "").replace("\\", "")
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    if _inline(found.content_type):
        return found.content_type, {**headers, "Content-Disposition": f'inline; filename="{safe}"'}
    return "application/octet-stream", {**headers, "Content-Disposition": f'attachment; filename="{safe}"'}


def local_path(svc: Services, found: Found) -> str | None:
    """The file itself when storage is a local folder (served streamed from disk)."""
    if isinstance(svc.objects, LocalStore):
        path = svc.objects.path(found.key)
        return str(path) if path.is_file() else None
    return None


async def open_stream(svc: Services, found: Found) -> tuple[int | None, AsyncIterator[bytes]]:
    """(its size, its bytes in chunks) from object storage, through a presigned GET read as it arrives, so a
    large output is never held whole; NotFound before anything is sent when storage has no such object."""
    import aiohttp

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=STREAM_READ_S))
    try:
        resp = await session.get(svc.objects.url(found.key))
    except (aiohttp.ClientError, TimeoutError) as exc:
        await session.close()
        raise BackendError(f"object storage did not answer: {exc}") from None
    if resp.status != 200:
        resp.release()
        await session.close()
        raise NotFound("no such file")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for part in resp.content.iter_chunked(STREAM_CHUNK_BYTES):
                yield part
        finally:
            resp.release()
            await session.close()
    return resp.content_length, chunks()


def read(svc: Services, found: Found) -> bytes:
    data = svc.objects.read_if_exists(found.key)
    if data is None:
        raise NotFound("no such file")
    return data
