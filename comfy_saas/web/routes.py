"""The API's operations as one table. The local server registers each row as a REST route (`create_app`), and
app.py registers each row as its own Modal web endpoint; both build the handler with `endpoint()`, so the two
OpenAPI documents list the same operations, descriptions and query parameters. The one difference is forced
by Modal: a fastapi_endpoint serves one route, "/", so what the path names locally (a job id, a template name,
a model's sha256) is a query parameter there (`?id=`, `?name=`, `?sha256=`), and the request body schema,
published locally, cannot be attached to Modal's generated route.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Header, Path, Query, Request, Response

from comfy_saas.jobs.services import Services

Home = Literal["local", "modal"]
ID = "{job_id}"
NAME = "{name}"
SHA = "{sha256}"
_MODAL_NAMES = {"job_id": "id", "name": "name", "sha256": "sha256"}  # what Modal's query string calls them


@dataclass(frozen=True)
class Route:
    """One operation: its Modal endpoint name, method, local path (`{job_id}`, `{name}` or `{sha256}` marks what it
    names), description, documented query parameters, the schema of its JSON body (if any), and extra local
    (method, path) pairs."""

    name: str
    method: str
    path: str
    doc: str
    query: tuple[str, ...] = ()
    body: str | None = None
    aliases: tuple[tuple[str, str], ...] = ()
    headers: tuple[str, ...] = ()

    @property
    def target(self) -> str | None:
        """The path parameter this route names, if any."""
        for marker in (ID, NAME, SHA):
            if marker in self.path:
                return marker.strip("{}")
        return None


ROUTES: tuple[Route, ...] = (
    Route("submit", "POST", "/v1/jobs", "Submit a job (a JobRequest): 201 with the job, 200 with the first job when "
          "an idempotency_key repeats. ?wait=N answers when it ends (200) or after N s (202).", query=("wait",),
          body="JobRequest"),
    Route("job", "GET", f"/v1/jobs/{ID}", "A job: status, progress, timings, outputs with fresh download URLs. "
          "?wait=N long-polls; ?include=workflow adds the workflow it ran.", query=("wait", "include")),
    Route("jobs", "GET", "/v1/jobs", "Jobs, newest first; pass next_cursor as cursor for the next page.",
          query=("status", "cursor", "limit", "user_id")),
    Route("cancel", "POST", f"/v1/jobs/{ID}/cancel", "Cancel a job: a queued one at once, a running one within "
          "about a second.", aliases=(("DELETE", f"/v1/jobs/{ID}"),)),
    Route("events", "GET", f"/v1/jobs/{ID}/events", "Progress as Server-Sent Events (id = sequence number), then "
          "the terminal event; resume with Last-Event-ID (or last_event_id).", query=("last_event_id",),
          headers=("Last-Event-ID",)),
    Route("health", "GET", "/health", "Whether the store and the queue answer, and the queue depth."),
    Route("metrics", "GET", "/metrics", "Prometheus text: jobs by status, queue depth per pool, phase histograms; "
          "API keys bound to a user get 404."),
    Route("put_workflow", "PUT", f"/v1/workflows/{NAME}", "Store a workflow template (either format) with named "
          "inputs.", body="TemplateRequest"),
    Route("workflow", "GET", f"/v1/workflows/{NAME}", "A workflow template and the JSON Schema of its inputs."),
    Route("workflows", "GET", "/v1/workflows", "The workflow templates this key sees."),
    Route("delete_workflow", "DELETE", f"/v1/workflows/{NAME}", "Delete a workflow template."),
    Route("workflow_jobs", "POST", f"/v1/workflows/{NAME}/jobs", "Submit a job from a template ({inputs, ...job "
          "options}); ?wait=N as for submit.", query=("wait",), body="TemplateJobRequest"),
    Route("models", "GET", "/v1/models", "The cached model files (API keys bound to a user get 404)."),
    Route("delete_model", "DELETE", f"/v1/models/{SHA}", "Remove a cached model file no running job uses (409 "
          "while one does)."),
)


HOT = {"submit", "job"}  # the routes a polling client calls over and over: web/fast_lane.py answers them


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
        "put_workflow": lambda: http.handle_template_put(svc, request, job_id),
        "workflow": lambda: http.handle_template_get(svc, request, job_id),
        "workflows": lambda: http.handle_template_list(svc, request),
        "delete_workflow": lambda: http.handle_template_delete(svc, request, job_id),
        "workflow_jobs": lambda: http.handle_template_run(svc, request, job_id),
        "models": lambda: http.handle_models(svc, request),
        "delete_model": lambda: http.handle_model_delete(svc, request, job_id),
    }
    return await handlers[route.name]()


def endpoint(route: Route, services: Callable[[], Services], home: Home, events_stream_s: float = 3600.0
             ) -> Callable[..., Awaitable[Response]]:
    """The route's handler as FastAPI sees it in either home: named after the operation, its description as
    docstring, and a signature declaring what it names (path locally, query on Modal) and the query parameters."""
    target = route.target or "job_id"
    id_name = target if home == "local" else _MODAL_NAMES[target]

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
    target = route.target
    what = {"job_id": "the job id", "name": "the template's name", "sha256": "the model file's sha256"}
    if target and home == "local":
        params.append(inspect.Parameter(target, keyword, annotation=str, default=Path(description=what[target])))
    elif target:
        params.append(inspect.Parameter(_MODAL_NAMES[target], keyword, annotation=str,
                                        default=Query("", description=what[target])))
    for name in route.query:
        params.append(inspect.Parameter(name, keyword, annotation=str | None, default=Query(None)))
    for name in route.headers:
        params.append(inspect.Parameter(name.replace("-", "_").lower() + "_header", keyword, annotation=str | None,
                                        default=Header(None, alias=name)))
    return inspect.Signature(params)


def body_doc(schema: str) -> dict[str, Any]:
    """The request body a route documents (locally; see the module docstring)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}}
