"""The status polls and submissions, answered without FastAPI's router.

Routing (a scan of some fifty routes, the included routers' among them) and FastAPI's per-request machinery
cost a status poll about 0.15 ms on this project's VM while a client polls every 5 ms, and 0.6 ms after an idle
spell, against under 0.1 ms for reading the job itself when warm. The handlers of these few
routes take no dependencies and read everything else from the request, so the lane calls them directly. Every
other request, and any of these it does not match exactly (a trailing slash, a /k/ or /p/ prefix, a root path,
another method, HEAD), goes through the app as before; their routes stay registered there too, for the
OpenAPI document and as the fallback.

Each surface offers its lanes as it mounts its routes (`offer`); `install` puts the lane in front of the app
once every surface is mounted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[..., Awaitable[Response]]  # handler(request, **path_params)


@dataclass(frozen=True)
class Lane:
    """One route: its method, its path (at most one parameter, which is the whole last segment, as
    "/v1/jobs/{job_id}"), and its handler."""

    method: str
    path: str
    handler: Handler

    @property
    def param(self) -> str | None:
        last = self.path.rsplit("/", 1)[1]
        return last[1:-1] if last.startswith("{") and last.endswith("}") else None

    @property
    def head(self) -> str:
        """The path up to its parameter (the whole path when it has none)."""
        return self.path.rsplit("/", 1)[0] if self.param else self.path


class FastLane:
    """ASGI middleware: a request that matches a lane exactly goes straight to its handler."""

    def __init__(self, app: ASGIApp, lanes: list[Lane]) -> None:
        self.app = app
        self._lanes: dict[tuple[str, str, bool], Lane] = {}
        for lane in lanes:
            self._lanes.setdefault((lane.method, lane.head, lane.param is not None), lane)

    def match(self, scope: Scope) -> tuple[Lane, dict[str, str]] | None:
        """The lane of an HTTP request and its path parameters; None for everything the app routes itself."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        method, path = scope["method"], scope["path"]
        lane = self._lanes.get((method, path, False))
        if lane is not None:
            return lane, {}
        head, _, last = path.rpartition("/")
        lane = self._lanes.get((method, head, True)) if last else None
        return (lane, {lane.param or "": last}) if lane is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        lane, params = found
        scope = {**scope, "path_params": params}
        response = await lane.handler(Request(scope, receive, send), **params)
        await response(scope, receive, send)


def offer(app: FastAPI, lanes: list[Lane]) -> None:
    """Name routes of `app` whose handlers may be called without its router (see the module docstring)."""
    _offered(app).extend(lanes)


def install(app: FastAPI) -> None:
    """Put the lanes offered so far in front of `app` (outside its other middleware: a prefixed path is left
    to them, and so to the router)."""
    app.add_middleware(FastLane, lanes=list(_offered(app)))


def _offered(app: FastAPI) -> list[Lane]:
    if not hasattr(app.state, "fast_lanes"):
        app.state.fast_lanes = []
    return app.state.fast_lanes
