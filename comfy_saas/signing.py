"""Standard Webhooks signatures (https://www.standardwebhooks.com): how the service signs a delivery and
how a receiver checks one. Standard library only, so the client SDK can use it without the server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping


def secret_key(secret: str) -> bytes:
    """The HMAC key: base64 after a `whsec_` prefix (Standard Webhooks), else the string's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a signed delivery carries."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body)}


def verify(secret: str, received: Mapping[str, str], body: bytes, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """True when the webhook-signature header carries a valid v1 signature and the timestamp is fresh."""
    lower = {k.lower(): v for k, v in received.items()}
    try:
        msg_id, timestamp = lower["webhook-id"], int(lower["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in lower.get("webhook-signature", "").split())
