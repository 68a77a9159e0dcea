"""An answer to a request whose body is refused unread, followed by a lingering close.

Most HTTP clients (urllib, requests, curl without Expect) read the answer only once they have sent the whole
body. A server that answers and closes with body bytes still arriving makes its kernel reset the connection,
and the client sees "connection reset" instead of the 401 or 413. So the answer goes out first (headers and
body, flushed), then the rest of the request body is read and dropped, chunk by chunk, up to a byte budget and
a deadline (or until the client pauses for IDLE_S), and only then does the response end and the connection
close. Nothing is kept: memory stays flat however much arrives. A body declared larger than the budget is not
waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

IDLE_S = 2.0  # a client that sends nothing for this long is done sending


class LingeringResponse(JSONResponse):
    """A JSON answer sent before the unread request body is drained (at most `drain_bytes`, `drain_s`)."""

    def __init__(self, content: Any, status_code: int, headers: dict[str, str], *, declared: int | None,
                 drain_bytes: int, drain_s: float) -> None:
        super().__init__(content, status_code, {**headers, "Connection": "close"})
        self.drain_bytes = drain_bytes if declared is None or declared <= drain_bytes else 0
        self.drain_s = drain_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        with contextlib.suppress(TimeoutError):  # a slow sender is closed on at the deadline
            await asyncio.wait_for(discard(receive, self.drain_bytes), self.drain_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def discard(receive: Receive, budget: int, idle_s: float = IDLE_S) -> int:
    """Read and drop request body chunks until the body ends, the client leaves or stops sending for idle_s, or
    `budget` bytes went by; how many bytes were dropped."""
    dropped = 0
    while dropped < budget:
        try:
            message = await asyncio.wait_for(receive(), idle_s)
        except TimeoutError:  # a client that stopped sending once it had the answer
            break
        if message["type"] != "http.request":
            break
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return dropped


def declared_length(raw: str | None) -> int | None:
    """The Content-Length header as a number; None when absent or not plain digits."""
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None
