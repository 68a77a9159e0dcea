"""Request bodies read under a cap as they stream in: a declared size over it is refused unread, and a body
sent without one (chunked) is refused the moment it passes the cap, never buffered whole first."""

from __future__ import annotations

from starlette.requests import Request

from comfy_saas.errors import BodyTooLarge


async def read_capped(request: Request, limit: int) -> bytearray:
    """The body, at most `limit` bytes; BodyTooLarge (naming the limit) as soon as it is known to be larger. One
    growing bytearray rather than a list of chunks joined at the end, so one copy instead of two."""
    declared = request.headers.get("content-length", "")
    if not declared.isascii() or (declared.isdigit() and int(declared) > limit):
        raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body")
        body += chunk
    return body
