"""The operations for other Modal apps (`modal.Function.from_name(...)`): plain dicts in, plain dicts out.

Errors come back as the same `{"error": {type, message, field?, status}}` body HTTP clients get, never as
a raised project exception (which a caller in another app could not deserialize).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy_saas.jobs import operations, templates
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.web.errors_http import error_body


def _answer(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except Exception as exc:  # every error becomes the one error shape
        return error_body(exc)


def submit_job(svc: Services, request: dict[str, Any], user_id: str | None = None) -> dict[str, Any]:
    """Submit with the same validation as HTTP; user_id stands in for a user-bound API key."""
    return _answer(lambda: operations.submit_job(svc, Caller("modal", user_id), request)[0])


def get_job(svc: Services, job_id: str, user_id: str | None = None) -> dict[str, Any]:
    return _answer(lambda: operations.get_job(svc, Caller("modal", user_id), job_id))


def list_jobs(svc: Services, user_id: str | None = None, **page: Any) -> dict[str, Any]:
    return _answer(lambda: operations.list_jobs(svc, Caller("modal", user_id), **page))


def cancel_job(svc: Services, job_id: str, user_id: str | None = None) -> dict[str, Any]:
    return _answer(lambda: operations.cancel_job(svc, Caller("modal", user_id), job_id))


# --- workflow templates (user_id stands in for a user-bound key; None manages the shared ones) -----------


def put_template(svc: Services, name: str, template: dict[str, Any], user_id: str | None = None) -> dict[str, Any]:
    """Store a template: {"workflow", "inputs"?, "description"?, "pool"?}; the template with its input schema."""
    return _answer(lambda: templates.put_template(svc, Caller("modal", user_id), name, template)[0])


def get_template(svc: Services, name: str, user_id: str | None = None) -> dict[str, Any]:
    return _answer(lambda: templates.get_template(svc, Caller("modal", user_id), name))


def list_templates(svc: Services, user_id: str | None = None) -> dict[str, Any]:
    return _answer(lambda: templates.list_templates(svc, Caller("modal", user_id)))


def delete_template(svc: Services, name: str, user_id: str | None = None) -> dict[str, Any]:
    return _answer(lambda: templates.delete_template(svc, Caller("modal", user_id), name))


def submit_template_job(svc: Services, name: str, request: dict[str, Any], user_id: str | None = None
                        ) -> dict[str, Any]:
    """A job from a template: {"inputs": {...}, ...job options}; the queued job."""
    return _answer(lambda: templates.submit_from_template(svc, Caller("modal", user_id), name, request)[0])
