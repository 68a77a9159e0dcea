"""Query parameters and headers, parsed with the one strict number rule (comfy_saas.inputs): anything
that is not plain ASCII digits in range is a 422 naming the parameter, never a 500."""

from __future__ import annotations

from comfy_saas.inputs import MAX_DIGITS, whole_number

MAX_EVENT_ID = 10**MAX_DIGITS - 1
_SIGNATURE_CHARS = frozenset("0123456789abcdef")


def last_event_id(header: str | None, query: str | None) -> int:
    """Where an event stream resumes: the Last-Event-ID header (or ?last_event_id=). `end`, the id of the
    terminal event a browser sends back after it, starts from the beginning."""
    raw = header if header is not None else query
    if raw is None or raw.strip() in {"", "end"}:
        return 0
    return whole_number(raw.strip(), "Last-Event-ID", 0, MAX_EVENT_ID)


def link_expiry(raw: str) -> int | None:
    """A signed file link's `expires` (seconds since the epoch), or None when it is not one we made."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_DIGITS:
        return None
    return int(raw)


def link_signature(raw: str) -> str | None:
    """A signed file link's `sig` (hex HMAC-SHA256), or None when it cannot be one of ours."""
    return raw if len(raw) == 64 and set(raw) <= _SIGNATURE_CHARS else None
