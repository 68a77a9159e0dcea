"""The path prefixes tools that cannot send headers use: `/k/<key>/` (the API key) and `/p/<pool>/` (the pool),
in either order, before a native path. They are taken off the path before routing, so every route exists once,
and what they said travels in the ASGI scope for auth.py and the prompt's pool."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "comfy_native"
_MARKERS = {"k": "key", "p": "pool"}
# Other surfaces' paths: a prefix in front of them would be dropped unused (their auth and pools are their own).
_FOREIGN = ("/v1", "/api/v2", "/docs", "/redoc", "/openapi.json", "/files", "/health")


def native_path(path: str) -> bool:
    """Whether a prefixed path is the native API's (anything else keeps its prefix, so it is not found)."""
    return not any(path == p or path.startswith(p + "/") for p in _FOREIGN)


def split_prefixes(path: str) -> tuple[str, dict[str, str]]:
    """(the path without its /k/<key>/ and /p/<pool>/ prefixes, what they named)."""
    found: dict[str, str] = {}
    while True:
        parts = path.split("/", 3)  # "", marker, value, rest
        if len(parts) < 3 or parts[1] not in _MARKERS or not parts[2] or _MARKERS[parts[1]] in found:
            return path, found
        found[_MARKERS[parts[1]]] = parts[2]
        path = "/" + (parts[3] if len(parts) > 3 else "")


class PrefixMiddleware:
    """Strips the prefixes of HTTP and WebSocket requests; everything else passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(("/k/", "/p/")):
            path, found = split_prefixes(scope["path"])
            if found and native_path(path):
                scope = {**scope, "path": path, "raw_path": path.encode(), SCOPE_KEY: found}
        await self.app(scope, receive, send)


def prefixed(scope: dict[str, Any]) -> dict[str, str]:
    """What the request's prefixes named ({"key"?, "pool"?})."""
    return scope.get(SCOPE_KEY) or {}
