"""The input rules every entry point shares: one strict number parser, one identifier rule per kind of
name, and JSON parsing with a nesting limit enforced before the parser could recurse.

Every pattern is matched whole (`fullmatch`), so a trailing newline never slips through the way it does
past `^...$`. Values shown back in error messages are cut short, so a hostile id is never echoed whole.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

from comfy_saas.errors import InvalidInput, MalformedBody

# user ids, node ids, metadata-free names: letters and digits first, then a few separators
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}")
POOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# a file name a workflow refers to: no path separators, no control characters, no leading dot
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,254}")

MAX_DIGITS = 18  # every number we parse fits in 63 bits; longer digit strings are refused unread
SHOWN_CHARS = 64


def matches(rule: re.Pattern[str], value: Any) -> bool:
    """True when `value` is a string that the whole rule matches."""
    return isinstance(value, str) and rule.fullmatch(value) is not None


def file_name_ok(value: Any) -> bool:
    """A plain file name: the FILE_NAME rule, no `..`, no trailing space or dot."""
    return matches(FILE_NAME, value) and ".." not in value and not value.endswith((" ", "."))


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value), cut to `limit` characters so hostile input is never echoed at length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def whole_number(raw: str | None, field: str, lo: int, hi: int, default: int | None = None) -> int:
    """Parse a query parameter or header as a whole number in [lo, hi]: ASCII digits only (no "²", no sign,
    no spaces), at most MAX_DIGITS of them. InvalidInput naming the field and the range otherwise."""
    if raw is None or raw == "":
        if default is not None:
            return default
        raise InvalidInput(f"{field} is required: a whole number from {lo} to {hi}", field=field)
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_DIGITS or not lo <= int(raw) <= hi:
        raise InvalidInput(f"{field} must be a whole number from {lo} to {hi}", field=field)
    return int(raw)


# --- JSON ------------------------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_AS_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 for an opener, -1 (signed) for a closer


def nesting_depth(raw: bytes | bytearray) -> int:
    """How deeply arrays and objects nest in a JSON text, found without parsing it: strings are dropped,
    the brackets left are summed as +1/-1 and the highest running total is the depth (linear, no recursion)."""
    steps = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET).translate(_AS_STEP)
    return max(accumulate(array("b", steps)), default=0)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{shown(text)} is too large for a number")
    return value


def loads(raw: bytes | bytearray | str, max_depth: int) -> Any:
    """Parse JSON with the nesting limit checked first (the parser never nears Python's recursion limit)
    and NaN/Infinity refused rather than read. MalformedBody (400) for bad JSON, InvalidInput (422) for
    JSON beyond the limits, both naming the body."""
    data = raw.encode() if isinstance(raw, str) else raw
    if (depth := nesting_depth(data)) > max_depth:
        raise InvalidInput(f"body: JSON nested {depth} levels deep; the limit is {max_depth}", field="body")
    try:
        return json.loads(data, parse_constant=_no_constants, parse_float=_finite)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}", field="body") from None
    except ValueError as exc:  # valid JSON beyond our limits: NaN/Infinity, 1e999, an int of 4,300+ digits
        reason = "an integer has too many digits" if "digits" in str(exc) else str(exc)
        raise InvalidInput(f"body: {reason}; numbers must be finite (no NaN or Infinity) and shorter than "
                           "4,300 digits", field="body") from None
    except RecursionError:  # unreachable after the depth check; kept so no input can become a 500
        raise InvalidInput(f"body: JSON nested too deeply; the limit is {max_depth}", field="body") from None


def check_plain(value: Any, max_depth: int) -> None:
    """The same limits for a body that arrives already parsed (Modal's remote functions): nesting depth,
    finite numbers, JSON types only. Iterative, so a hostile structure cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise InvalidInput(f"body: nested deeper than {max_depth} levels (the limit)", field="body")
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict) and not all(isinstance(k, str) for k in item):
                raise InvalidInput("body: object keys must be strings", field="body")
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput("body: NaN and Infinity are not allowed", field="body")
        elif item is not None and not isinstance(item, str | int | float | bool):
            raise InvalidInput(f"body: {type(item).__name__} is not a JSON value", field="body")
