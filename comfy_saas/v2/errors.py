"""The one place the v2 surface turns errors into HTTP answers, in the contract's envelope
`{"error": {"code", "message", "details"}}` with its codes (ErrorEnvelope in the Comfy API v2 contract).

Our exception tree is shared with /v1; only the rendering differs. Anything that is not one of ours is an
`upstream_error` with a generic message, as the contract asks (no implementation detail leaks out).
"""

from __future__ import annotations

import logging
from typing import Any

from comfy_saas.errors import (
    AssetInUse,
    BackendError,
    BlobNotFound,
    BodyTooLarge,
    CatalogueUnavailable,
    ComfySaasError,
    Conflict,
    Forbidden,
    HashMismatch,
    IdempotencyInFlight,
    IdempotencyKeyReuse,
    InvalidInput,
    MalformedBody,
    MissingAsset,
    NotFound,
    Overloaded,
    PreflightFailed,
    RangeNotSatisfiable,
    TooManyStreams,
    Unauthorized,
    UnconvertibleWorkflow,
    WorkflowFormatUi,
)

log = logging.getLogger(__name__)
BACKEND_RETRY_AFTER_S = 5

# (exception class, HTTP status, contract code); the first match wins, so subclasses come first.
_CODES: list[tuple[type[ComfySaasError], int, str]] = [
    (MalformedBody, 422, "invalid_request"),  # the contract answers every unreadable submission with 422
    (BodyTooLarge, 413, "payload_too_large"),
    (RangeNotSatisfiable, 416, "range_not_satisfiable"),
    (WorkflowFormatUi, 422, "workflow_format_ui"),
    (MissingAsset, 422, "missing_asset"),
    (IdempotencyKeyReuse, 422, "idempotency_key_reuse"),
    (PreflightFailed, 422, "invalid_workflow"),
    (UnconvertibleWorkflow, 422, "invalid_workflow"),
    (InvalidInput, 422, "invalid_request"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (BlobNotFound, 404, "blob_not_found"),
    (NotFound, 404, "not_found"),
    (HashMismatch, 409, "hash_mismatch"),
    (AssetInUse, 409, "asset_in_use"),
    (IdempotencyInFlight, 409, "idempotency_key_in_use"),
    (Conflict, 409, "conflict"),
    (TooManyStreams, 429, "too_many_streams"),
    (Overloaded, 429, "queue_full"),
    (CatalogueUnavailable, 429, "deployment_not_ready"),
    (BackendError, 500, "upstream_error"),
]
_GENERIC = "an unexpected failure in the service's backing stores; retry shortly"


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, envelope, headers) for any exception."""
    if not isinstance(exc, ComfySaasError):
        log.error("v2: unhandled error", exc_info=exc)
        return 500, envelope("upstream_error", _GENERIC), {}
    status, code = next(((s, c) for cls, s, c in _CODES if isinstance(exc, cls)), (500, "upstream_error"))
    if code == "invalid_request" and (getattr(exc, "field", None) or "").startswith("workflow"):
        code = "invalid_workflow"  # the graph itself is malformed: the contract's code for it
    message = _GENERIC if status >= 500 else exc.message
    return status, envelope(code, message, details(exc)), _headers(exc)


def envelope(code: str, message: str, details_: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's error body."""
    return {"error": {"code": code, "message": message, "details": details_}}


def details(exc: ComfySaasError) -> dict[str, Any] | None:
    """Machine-readable detail: per-node errors for a refused workflow, the field for other bad input."""
    if isinstance(exc, PreflightFailed | UnconvertibleWorkflow):
        return {"node_errors": node_errors(exc.problems)}
    if isinstance(exc, MissingAsset):
        return exc.details or None
    if isinstance(exc, RangeNotSatisfiable):
        return {"size_bytes": exc.size}
    if isinstance(exc, InvalidInput) and exc.field:
        return {"field": exc.field}
    return None


def node_errors(problems: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Pre-flight problems grouped by node, as `{node_id: [{field, reason, message, class_type}]}`."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for p in problems:
        entry = {"field": p.get("details") or p.get("input") or None, "reason": p.get("type"),
                 "message": p.get("message"), "class_type": p.get("class_type")}
        grouped.setdefault(str(p.get("node_id", "")), []).append(entry)
    return grouped


def _headers(exc: ComfySaasError) -> dict[str, str]:
    if isinstance(exc, Overloaded | CatalogueUnavailable | IdempotencyInFlight):
        return {"Retry-After": str(max(1, int(exc.retry_after_s)))}
    if isinstance(exc, BackendError):
        return {"Retry-After": str(BACKEND_RETRY_AFTER_S)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RangeNotSatisfiable):
        return {"Content-Range": f"bytes */{exc.size}"}
    return {}
