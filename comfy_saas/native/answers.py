"""The native surface's one place where errors become HTTP answers: /prompt refusals in ComfyUI's shape
({"error": {type, message, details, extra_info}, "node_errors": {...}}), everything else as on /v1."""

from __future__ import annotations

from typing import Any

from comfy_saas.errors import BodyTooLarge, InvalidInput, PreflightFailed, UnconvertibleWorkflow
from comfy_saas.native.prompts import PromptRefused
from comfy_saas.web.errors_http import error_response


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def node_errors(problems: list[dict[str, Any]]) -> dict[str, Any]:
    """Pre-flight problems per node, as ComfyUI's node_errors."""
    found: dict[str, Any] = {}
    for p in problems:
        entry = found.setdefault(str(p.get("node_id")), {"errors": [], "dependent_outputs": [],
                                                         "class_type": p.get("class_type")})
        entry["errors"].append(_error(p.get("type", "invalid_input"), p.get("message", ""), p.get("details", "")))
    return found


def _preflight(exc: PreflightFailed | UnconvertibleWorkflow) -> dict[str, Any]:
    missing = next((p for p in exc.problems if p.get("type") == "invalid_prompt"), None)
    if missing is not None:  # ComfyUI stops at an unknown class, naming it and no node errors
        return {"error": _error("invalid_prompt", missing["message"], missing.get("details", "")), "node_errors": {}}
    first = exc.problems[0] if exc.problems else {}
    details = f"{first.get('message', '')}: {first.get('details', '')}".strip(": ")
    return {"error": _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            "node_errors": node_errors(exc.problems)}


def prompt_refusal(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for an error of POST /prompt."""
    if isinstance(exc, PreflightFailed | UnconvertibleWorkflow):
        return 400, _preflight(exc), {}
    if isinstance(exc, PromptRefused):
        return 400, {"error": _error(exc.kind, exc.message, exc.message), "node_errors": {}}, {}
    if isinstance(exc, InvalidInput) and not isinstance(exc, BodyTooLarge):
        return 400, {"error": _error("invalid_prompt", exc.message, exc.field or ""), "node_errors": {}}, {}
    return error_response(exc)


def refusal(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for an error of any other native route: our one error shape."""
    return error_response(exc)
