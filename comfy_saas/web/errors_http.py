"""The one place errors become HTTP answers, always in one shape: {"error": {type, message, field?}}.

Remote-callable Modal functions use the same map, returning the body instead of raising, so callers in
other apps see the same contract as HTTP clients.
"""

from __future__ import annotations

from typing import Any

from comfy_saas.errors import (
    BackendError,
    BodyTooLarge,
    CatalogueUnavailable,
    ComfySaasError,
    Conflict,
    Forbidden,
    InvalidInput,
    MalformedBody,
    NotFound,
    Overloaded,
    RangeNotSatisfiable,
    Unauthorized,
)

BACKEND_RETRY_AFTER_S = 5  # a store outage: the guard already retried for about a second

_STATUS = [(MalformedBody, 400), (BodyTooLarge, 413), (RangeNotSatisfiable, 416), (InvalidInput, 422),
           (Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409), (Overloaded, 429),
           (BackendError, 503), (ComfySaasError, 500)]


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; unknown exceptions are a bare internal error."""
    if not isinstance(exc, ComfySaasError):
        return 500, {"error": {"type": "internal_error", "message": "internal error"}}, {}
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    headers = {}
    if isinstance(exc, Overloaded | CatalogueUnavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, BackendError):
        headers["Retry-After"] = str(BACKEND_RETRY_AFTER_S)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return status, {"error": exc.to_dict()}, headers


def error_body(exc: BaseException) -> dict[str, Any]:
    """The error as a plain dict with its HTTP status, for callers that are not HTTP clients."""
    status, body, headers = error_response(exc)
    body["error"]["status"] = status
    if "Retry-After" in headers:
        body["error"]["retry_after_s"] = int(headers["Retry-After"])
    return body
