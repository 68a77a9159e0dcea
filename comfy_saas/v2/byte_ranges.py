"""The `Range` header of an asset content request (RFC 9110 section 14): one `bytes` range is honoured; a header
that is not one valid bytes range (another unit, a typo, several ranges) is ignored, as RFC 9110 lets a server
do, and the whole content is served; a valid range wholly outside the content is a 416."""

from __future__ import annotations

import re

from comfy_saas.errors import RangeNotSatisfiable

_ONE_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})", re.IGNORECASE)


def requested(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of `size` bytes the header asks for, both included; None to serve everything;
    RangeNotSatisfiable when the range is valid and no byte of it exists."""
    match = _ONE_RANGE.fullmatch((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - int(last)), size - 1
    if last and int(last) < int(first):
        return None  # not a valid range at all
    if int(first) >= size:
        raise _unsatisfiable(size)
    return int(first), min(int(last), size - 1) if last else size - 1


def header_value(span: tuple[int, int]) -> str:
    """The Range header asking for exactly `span`."""
    return f"bytes={span[0]}-{span[1]}"


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"Range: no byte of it lies within the content's {size} bytes", size)
