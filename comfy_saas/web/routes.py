"""The API's operations as one table. The local server registers each row as a REST route (`create_app`), and
app.py registers each row as its own Modal web endpoint; both build the handler with `endpoint()`, so the two
OpenAPI documents list the same operations, descriptions and query parameters. The one difference is forced
by Modal: a fastapi_endpoint serves one route, "/", so the job id is a path parameter locally and `?id=` there
(and the request body schema, published locally, cannot be attached to Modal's generated route).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Path, Query, Request, Response

from comfy_saas.jobs.services import Services

Home = Literal["local", "modal"]
ID = "{job_id}"


@dataclass(frozen=True)
class Route:
    """One operation: its Modal endpoint name, method, local path (`{job_id}` marks the id), description,
    documented query parameters, whether it takes a JobRequest body, and extra local (method, path) pairs."""

    name: str
    method: str
    path: str
    doc: str
    query: tuple[str, ...] = ()
    body: bool = False
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def takes_id(self) -> bool:
        return ID in self.path


ROUTES: tuple[Route, ...] = (
    Route("submit", "POST", "/v1/jobs", "Submit a job (a JobRequest): 201 with the job, 200 with the first job when "
          "an idempotency_key repeats.", body=True),
    Route("job", "GET", f"/v1/jobs/{ID}", "A job: status, progress, timings, outputs with fresh download URLs."),
    Route("jobs", "GET", "/v1/jobs", "Jobs, newest first; pass next_cursor as cursor for the next page.",
          query=("status", "cursor", "limit", "user_id")),
    Route("cancel", "POST", f"/v1/jobs/{ID}/cancel", "Cancel a job: a queued one at once, a running one within "
          "about a second.", aliases=(("DELETE", f"/v1/jobs/{ID}"),)),
    Route("events", "GET", f"/v1/jobs/{ID}/events", "Progress as Server-Sent Events (id = sequence number), then "
          "the terminal event; resume with Last-Event-ID (or last_event_id).", query=("last_event_id",)),
    Route("health", "GET", "/health", "Whether the store and the queue answer, and the queue depth."),
    Route("metrics", "GET", "/metrics", "Prometheus text: jobs by status, queue depth per pool, phase histograms; "
          "API keys bound to a user get 404."),
)


async def dispatch(route: Route, svc: Services, request: Request, job_id: str, events_stream_s: float) -> Response:
    """Call the route's handler in web/http.py."""
    from comfy_saas.web import http

    handlers: dict[str, Callable[[], Awaitable[Response]]] = {
        "submit": lambda: http.handle_submit(svc, request),
        "job": lambda: http.handle_get(svc, request, job_id),
        "jobs": lambda: http.handle_list(svc, request),
        "cancel": lambda: http.handle_cancel(svc, request, job_id),
        "events": lambda: http.handle_events(svc, request, job_id, max_s=events_stream_s),
        "health": lambda: http.handle_health(svc),
        "metrics": lambda: http.handle_metrics(svc, request),
    }
    return await handlers[route.name]()


def endpoint(route: Route, services: Callable[[], Services], home: Home, events_stream_s: float = 3600.0
             ) -> Callable[..., Awaitable[Response]]:
    """The route's handler as FastAPI sees it in either home: named after the operation, its description as
    docstring, and a signature declaring the job id (path locally, query on Modal) and the query parameters."""
    id_name = "job_id" if home == "local" else "id"

    async def handler(request: Request, **params: Any) -> Response:
        return await dispatch(route, services(), request, params.get(id_name) or "", events_stream_s)

    handler.__name__ = handler.__qualname__ = route.name
    handler.__doc__ = route.doc
    handler.__signature__ = signature(route, home)  # type: ignore[attr-defined]
    return handler


def signature(route: Route, home: Home) -> inspect.Signature:
    """request, then the job id where the route takes one, then the documented query parameters."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    if route.takes_id and home == "local":
        params.append(inspect.Parameter("job_id", keyword, annotation=str, default=Path(description="the job id")))
    elif route.takes_id:
        params.append(inspect.Parameter("id", keyword, annotation=str, default=Query("", description="the job id")))
    for name in route.query:
        params.append(inspect.Parameter(name, keyword, annotation=str | None, default=Query(None)))
    return inspect.Signature(params)


def body_doc() -> dict[str, Any]:
    """The request body a submit route documents (locally; see the module docstring)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/JobRequest"}}}}}
