"""Workflow templates: a workflow in either format with named, typed inputs, kept per owner, and jobs made
from them by name.

A key bound to a user manages that user's templates and also sees the shared ones (its own win on a name
clash); a key not bound to a user manages the shared set. A template (description, inputs, format, pool and
the workflow as stored) is one object in object storage, `templates/{owner}/{name}/template.json`, not a Dict
entry: Modal drops Dict entries nobody touched for 7 days, and a template may rest for months between uses.
Reading one costs one object GET; listing, one LIST and the GETs together. Input types, bounds and choices come
from the pool's current catalogue each time, so they follow the deployment (new models appear in the choices
without storing the template again).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfy_saas.backends.parallel import run_all
from comfy_saas.config import Limits
from comfy_saas.errors import BackendError, Conflict, InvalidInput, NotFound, PreflightFailed
from comfy_saas.jobs import keys, operations
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.request import check_workflow, invalid_input_from, json_object
from comfy_saas.jobs.services import Services
from comfy_saas.workflows import input_values, inputs, preflight, seeds
from comfy_saas.workflows.convert import convert
from comfy_saas.workflows.ui_graph import is_ui_format

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_POOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\Z")


class TemplateRequest(BaseModel):
    """The body of PUT /v1/workflows/{name}."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="API-format or UI-format workflow")
    inputs: dict[str, Any] | None = Field(default=None, description="{name: {node, input}} or {name: {targets: "
                                                                    "[{node, input}, ...]}}; also $name in titles")
    description: str | None = Field(default=None, max_length=2000)
    pool: str | None = Field(default=None, description="worker pool of its jobs (and whose catalogue types it)")


def _parse(body: bytes | bytearray | str | dict[str, Any], limits: Limits) -> TemplateRequest:
    try:
        req = TemplateRequest.model_validate(json_object(body, limits))
    except ValidationError as exc:
        raise invalid_input_from(exc) from None
    if req.pool is not None and not _POOL.match(req.pool):
        raise InvalidInput("pool: must be 1-64 characters of letters, digits and _ -", field="pool")
    check_workflow(req.workflow, limits)
    return req


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput("name: 1-64 characters of letters, digits and _ . - (starting with a letter or digit)",
                           field="name")
    return name


def _scopes(caller: Caller) -> list[str]:
    """Where the caller's templates are looked up, own first."""
    own = keys.template_scope(caller.user_id)
    return [own] if caller.user_id is None else [own, keys.template_scope(None)]


# --- typing a template against the catalogue -----------------------------------------------------------


def _api_form(workflow: dict[str, Any], nodes: dict[str, Any], limits: Limits
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API-format workflow, PrimitiveNode targets); dynamic prompts stay unexpanded so defaults read as saved."""
    if not is_ui_format(workflow):
        return workflow, {}
    conversion = convert(workflow, nodes, dynamic_prompts=False, max_nodes=limits.max_workflow_nodes)
    return conversion.prompt, conversion.primitives


def _typed(record: dict[str, Any], workflow: dict[str, Any], nodes: dict[str, Any], limits: Limits
           ) -> dict[str, inputs.TemplateInput]:
    prompt, _ = _api_form(workflow, nodes, limits)
    return inputs.resolve(record["inputs"], prompt, nodes)


def _view(name: str, scope: str, record: dict[str, Any], workflow: dict[str, Any],
          typed: dict[str, inputs.TemplateInput]) -> dict[str, Any]:
    return {**_summary(name, scope, record), "inputs": _shown(record["inputs"]),
            "schema": inputs.json_schema(name, typed), "workflow": workflow}


def _summary(name: str, scope: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": record.get("description"), "workflow_format": record["workflow_format"],
            "pool": record.get("pool"), "shared": scope == keys.template_scope(None),
            "created_at": record["created_at"], "updated_at": record["updated_at"]}


def _shown(spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Inputs in the form PUT takes: {node, input} for one target, {targets: [...]} for several."""
    out = {}
    for name, item in spec.items():
        targets = [{"node": node, "input": inp} for node, inp in item["targets"]]
        shown = targets[0] if len(targets) == 1 else {"targets": targets}
        out[name] = {**shown, **({"description": item["description"]} if item.get("description") else {})}
    return out


# --- operations ----------------------------------------------------------------------------------------


def put_template(svc: Services, caller: Caller, name: str, body: bytes | bytearray | str | dict[str, Any]
                 ) -> tuple[dict[str, Any], bool]:
    """Store (or replace) a template after checking it converts, passes pre-flight and its inputs resolve;
    (view, created)."""
    name, req = check_name(name), _parse(body, svc.settings.limits)
    nodes = operations.catalogue(svc, req.pool, needed=True)
    prompt, primitives = _api_form(req.workflow, nodes, svc.settings.limits)
    problems = preflight.validate(prompt, nodes)
    if problems:
        first = problems[0]
        raise PreflightFailed(f"workflow: node {first['node_id']} ({first['class_type']}): {first['message']} "
                              f"{first['details']}".rstrip(), problems)
    spec = {**inputs.from_titles(prompt, primitives, nodes), **inputs.declared(req.inputs)}
    typed = inputs.resolve(spec, prompt, nodes)
    record = {"description": req.description, "inputs": spec, "pool": req.pool,
              "workflow_format": "ui" if is_ui_format(req.workflow) else "api"}
    scope = keys.template_scope(caller.user_id)
    record, created = _store(svc, scope, name, record, req.workflow)
    return _view(name, scope, record, req.workflow, typed), created


def _store(svc: Services, scope: str, name: str, record: dict[str, Any], workflow: dict[str, Any]
           ) -> tuple[dict[str, Any], bool]:
    """Write the template's object (a whole replacement, so a reader sees the old one or the new one), after
    the owner's listing and the previous version, read together."""
    existing, previous = run_all([lambda: _names(svc, scope), lambda: _read(svc, scope, name)])
    if previous is None and len(existing) >= svc.settings.max_templates:
        raise Conflict(f"this owner already has {svc.settings.max_templates} templates (COMFY_MAX_TEMPLATES); "
                       f"delete one first")
    now = svc.store.clock().isoformat()
    record = {**record, "created_at": (previous or {}).get("record", {}).get("created_at", now), "updated_at": now}
    body = json.dumps({"record": record, "workflow": workflow}, separators=(",", ":")).encode()
    svc.objects.put_bytes(keys.template_object(scope, name), body, "application/json")
    return record, previous is None


def _read(svc: Services, scope: str, name: str) -> dict[str, Any] | None:
    """{"record", "workflow"} of one template, None if there is none."""
    raw = svc.objects.read_if_exists(keys.template_object(scope, name))
    try:
        return None if raw is None else json.loads(raw)
    except ValueError as exc:  # a damaged object is storage's fault, never the caller's
        raise BackendError(f"template {name!r} could not be read back: {exc}") from exc


def _names(svc: Services, scope: str) -> set[str]:
    return {keys.template_name(k) for k in svc.objects.list_keys(scope)
            if k.endswith("/template.json")}


def _load(svc: Services, caller: Caller, name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(scope, record, workflow) of the template the caller sees under this name; NotFound otherwise."""
    scopes = _scopes(caller)
    for scope, found in zip(scopes, run_all([lambda s=s: _read(svc, s, name) for s in scopes]), strict=True):
        if found is not None:
            return scope, found["record"], found["workflow"]
    raise NotFound(f"no workflow template {name!r}")


def get_template(svc: Services, caller: Caller, name: str) -> dict[str, Any]:
    """The template, its inputs and the JSON Schema of its inputs (typed by the current catalogue)."""
    scope, record, workflow = _load(svc, caller, check_name(name))
    nodes = operations.catalogue(svc, record.get("pool"), needed=True)
    return _view(name, scope, record, workflow, _typed(record, workflow, nodes, svc.settings.limits))


def list_templates(svc: Services, caller: Caller) -> dict[str, Any]:
    """Every template the caller sees, by name (own ones hide shared ones of the same name): the scopes'
    listings together, then every template shown read together."""
    scopes = _scopes(caller)
    seen: dict[str, str] = {}
    for scope, names in zip(scopes, run_all([lambda s=s: _names(svc, s) for s in scopes]), strict=True):
        seen.update({n: scope for n in names if n not in seen})
    pairs = sorted(seen.items())
    found = run_all([lambda n=n, s=s: _read(svc, s, n) for n, s in pairs])
    return {"templates": [{**_summary(n, s, f["record"]), "inputs": sorted(f["record"]["inputs"])}
                          for (n, s), f in zip(pairs, found, strict=True) if f is not None]}  # None: deleted since


def delete_template(svc: Services, caller: Caller, name: str) -> dict[str, Any]:
    """Delete one of the caller's own templates (a user-bound key cannot delete shared ones)."""
    scope = keys.template_scope(caller.user_id)
    name = check_name(name)
    if not svc.objects.delete_prefix(keys.template_folder(scope, name)):
        raise NotFound(f"no workflow template {name!r} of yours")
    return {"name": name, "deleted": True}


def submit_from_template(svc: Services, caller: Caller, name: str, body: bytes | bytearray | str | dict[str, Any]
                         ) -> tuple[dict[str, Any], bool]:
    """A job from a template: `inputs` checked against its schema, plus the usual job options."""
    options = json_object(body, svc.settings.limits)
    if "workflow" in options:
        raise InvalidInput("workflow: a job from a template uses the template's workflow", field="workflow")
    values = options.pop("inputs", None) or {}
    _, record, workflow = _load(svc, caller, check_name(name))
    pool = options.get("pool") or record.get("pool")
    nodes = operations.catalogue(svc, pool if isinstance(pool, str) else None, needed=True)
    typed = _typed(record, workflow, nodes, svc.settings.limits)
    input_values.check(values, typed)
    key = options.get("idempotency_key")
    rng = seeds.submission_rng(caller.user_id or str(options.get("user_id") or ""), str(key) if key else None)
    overrides, media, drawn = input_values.to_overrides(values, typed, rng)
    job = {**options, "workflow": workflow, "overrides": overrides + _listed(options, "overrides"),
           "media": _listed(options, "media") + media, **({"pool": pool} if pool else {})}
    return operations.submit_job(svc, caller, job, recorded={"template": name, "seeds": drawn})


def _listed(options: dict[str, Any], field: str) -> list[Any]:
    value = options.get(field, [])
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: must be a list", field=field)
    return value
