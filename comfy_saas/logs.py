"""Structured logs: one JSON object per line, with job id, attempt, worker id and phase where known.

Secrets never reach a log line: bearer tokens, URL signatures and long base64 runs are redacted from
every message, whoever wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

FIELDS = ("event", "job_id", "attempt", "worker_id", "phase", "status", "pool", "error")
_REDACT = [
    (re.compile(r"(?i)(bearer\s+)[^\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:sig|signature|x-amz-signature|x-amz-credential|token|key)=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(?i)(whsec_)[A-Za-z0-9+/=]+"), r"\1[redacted]"),
    (re.compile(r"[A-Za-z0-9+/]{120,}={0,2}"), "[base64 redacted]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": redact(record.getMessage())}
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = redact(str(value)) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO, stream: Any = None) -> None:
    """Send every log record, as JSON lines, to stderr (or `stream`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one named event with structured fields (job_id, attempt, worker_id, phase, ...)."""
    logger.log(level, name, extra={"event": name, **fields})
