"""What a validated submission becomes before it is stored: the API-format workflow that will run (a UI-format
graph converted with the deployment's catalogue), its overrides, and seeds drawn for -1/"random" values.

The request keeps the workflow as submitted (so an idempotency key compares what the client sent); the
payload holds the workflow that runs; the job records the format, the seeds drawn and what conversion noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_saas.config import Limits
from comfy_saas.errors import InvalidInput
from comfy_saas.jobs.request import JobRequest, check_workflow
from comfy_saas.workflows import files, seeds
from comfy_saas.workflows.convert import convert
from comfy_saas.workflows.edits import apply_overrides, copy_graph
from comfy_saas.workflows.ui_graph import is_ui_format

WARNINGS_KEPT = 20


@dataclass
class Prepared:
    request: JobRequest  # carries the fields the job records (see JobRequest.with_recorded)
    workflow: dict[str, Any]
    overrides: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        """What the worker reads: the workflow that runs, media and overrides."""
        media = self.request.model_dump(mode="json", include={"media"})["media"]
        return {"workflow": self.workflow, "media": media, "overrides": self.overrides}


def prepare(request: JobRequest, nodes: dict[str, Any] | None, limits: Limits,
            recorded: dict[str, Any] | None = None) -> Prepared:
    """Convert (UI format needs `nodes`, the catalogue), check overrides, draw seeds."""
    recorded = dict(recorded or {})
    rng = seeds.submission_rng(request.user_id, request.idempotency_key)
    fmt, warnings = "api", []
    if is_ui_format(request.workflow):
        if nodes is None:
            raise ValueError("converting a UI-format workflow needs the node catalogue")
        conversion = convert(request.workflow, nodes, rng=rng, max_nodes=limits.max_workflow_nodes)
        workflow, fmt, warnings = conversion.prompt, "ui", conversion.warnings
        if not workflow:
            raise InvalidInput("workflow: the UI-format workflow has no node that runs (all are notes, muted or "
                               "bypassed)", field="workflow")
        check_workflow(workflow, limits)
        _check_override_nodes(request, workflow)
        files.check(apply_overrides(workflow, [o.model_dump() for o in request.overrides]))
    else:
        workflow = copy_graph(request.workflow)
    overrides = [o.model_dump(mode="json") for o in request.overrides]
    drawn = seeds.draw(workflow, overrides, nodes, rng)
    recorded["seeds"] = [*recorded.get("seeds", []), *drawn]
    recorded.update(workflow_format=fmt, workflow_warnings=warnings[:WARNINGS_KEPT])
    return Prepared(request.with_recorded(**recorded), workflow, overrides)


def _check_override_nodes(request: JobRequest, workflow: dict[str, Any]) -> None:
    for i, o in enumerate(request.overrides):
        if o.node not in workflow:
            raise InvalidInput(f"overrides[{i}].node: no node {o.node!r} in the converted workflow (ids of nodes in "
                               f"subgraphs look like 'instance:inner')", field=f"overrides[{i}].node")
