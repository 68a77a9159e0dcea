"""The operations for other Modal apps (`modal.Function.from_name(...)`): plain dicts in, plain dicts out.

Errors come back as the same `{"error": {type, message, field?, status}}` body HTTP clients get, never as
a raised project exception (which a caller in another app could not deserialize).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy_saas.jobs import operations
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
