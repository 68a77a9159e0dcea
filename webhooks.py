"""Signed webhooks for terminal events, the Standard Webhooks way, retried over minutes.

A delivery is data in the store (registered once by the terminal transition's winner); sending it
never blocks or fails the job. Each attempt is claimed with skip_if_exists, so two dispatchers never
send the same attempt, and every attempt is recorded on the delivery (time, status code, error).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import logs
import safe_fetch
from api import Services, job_view
from errors import MediaError
from models import Job, utcnow
from storage import past_finished_prefix

log = logging.getLogger(__name__)

STALE_ATTEMPT_S = 300  # an attempt claimed this long ago but never recorded died with its sender
Sender = Callable[[str, bytes, dict[str, str]], int]


def secret_key(secret: str) -> bytes:
    """The HMAC key: base64 after a `whsec_` prefix (Standard Webhooks), else the string's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """True when the webhook-signature header carries a valid v1 signature and the timestamp is fresh."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp = lower["webhook-id"], int(lower["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in lower.get("webhook-signature", "").split())


def retry_delay_s(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with ±20% jitter: base, 2*base, 4*base, ..."""
    return base_s * (2 ** (attempt - 1)) * (rng or random).uniform(0.8, 1.2)


def webhook_secret(svc: Services) -> str:
    """The configured secret; locally, one derived from the data dir's URL signing key. Deployed
    without one, deliveries fail (recorded on the job) rather than go out with an unverifiable signature."""
    if svc.settings.webhook_secret:
        return svc.settings.webhook_secret
    if svc.settings.storage_backend != "local":
        raise MediaError("COMFY_WEBHOOK_SECRET is not set; webhooks cannot be signed")
    from object_store import local_secret

    return "local-" + local_secret(svc.settings)


def _payload(svc: Services, delivery: dict[str, Any], now: datetime) -> bytes:
    job = svc.store.get(delivery["job_id"])
    data = job_view(svc, job) if job is not None else {"id": delivery["job_id"]}
    return json.dumps({"type": delivery["event"], "timestamp": now.isoformat(), "data": data}).encode()


def _send(svc: Services) -> Sender:
    allowlist = safe_fetch.parse_allowlist(svc.settings.private_url_allowlist)

    def send(url: str, body: bytes, headers: dict[str, str]) -> int:
        return safe_fetch.post(url, body, headers, svc.settings.webhook_timeout_s, allowlist)
    return send


def attempt(svc: Services, delivery: dict[str, Any], owner: str, now: datetime | None = None,
            send: Sender | None = None) -> bool:
    """Make the next attempt of a due delivery; False if it was not due or another sender has it."""
    now = now or utcnow()
    if delivery["state"] != "pending" or datetime.fromisoformat(delivery["next_at"]) > now:
        return False
    n = len(delivery["attempts"]) + 1
    if not svc.store.claim_webhook_attempt(delivery["job_id"], n, owner):
        return _recover_lost_attempt(svc, delivery, n, now)
    body = _payload(svc, delivery, now)
    stamp = int(now.timestamp())
    status, error = None, None
    try:
        headers = {"webhook-id": delivery["msg_id"], "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(webhook_secret(svc), delivery["msg_id"], stamp, body)}
        status = (send or _send(svc))(delivery["url"], body, headers)
    except MediaError as exc:  # refused (SSRF) or unreachable: a failed attempt, never a failed job
        error = exc.message
    _record(svc, delivery, {"n": n, "at": now.isoformat(), "status_code": status, "error": error}, now)
    logs.event(log, "webhook.attempt", job_id=delivery["job_id"], attempt=n, worker_id=owner, phase="webhook",
               status=delivery["state"], error=error or (None if status and status < 300 else f"HTTP {status}"))
    return True


def _record(svc: Services, delivery: dict[str, Any], entry: dict[str, Any], now: datetime) -> None:
    delivery["attempts"].append(entry)
    ok = entry["status_code"] is not None and 200 <= entry["status_code"] < 300
    if ok:
        delivery["state"] = "delivered"
    elif len(delivery["attempts"]) >= svc.settings.webhook_max_attempts:
        delivery["state"] = "failed"
    else:
        delay = retry_delay_s(len(delivery["attempts"]), svc.settings.webhook_backoff_s)
        delivery["next_at"] = (now + timedelta(seconds=delay)).isoformat()
    svc.store.save_webhook(delivery)


def _recover_lost_attempt(svc: Services, delivery: dict[str, Any], n: int, now: datetime) -> bool:
    claim = svc.store.webhook_attempt_claim(delivery["job_id"], n) or {}
    claimed_at = datetime.fromisoformat(claim.get("at", now.isoformat()))
    if (now - claimed_at).total_seconds() < STALE_ATTEMPT_S:
        return False  # someone is sending it right now
    _record(svc, delivery, {"n": n, "at": now.isoformat(), "status_code": None, "error": "sender lost"}, now)
    return True


def dispatch(svc: Services, owner: str = "dispatcher", now: datetime | None = None, max_slots: int = 2000,
             send: Sender | None = None) -> Counter:
    """Attempt every due delivery; advance the low-water mark past finished ones."""
    done: Counter = Counter()
    slots = svc.store.pending_webhooks(max_slots)
    settled = lambda d: d is None or d["state"] != "pending"  # noqa: E731
    new_low = past_finished_prefix(slots, settled)  # before attempts: newly settled ones go next time
    for _, delivery in slots:
        if not settled(delivery) and attempt(svc, delivery, owner, now, send):
            done[delivery["state"]] += 1  # attempt() records into this same dict
    if new_low is not None:
        svc.store.raise_webhook_low_water(new_low)
    return done


def send_progress(svc: Services, job: Job) -> None:
    """A signed `job.progress` event: one best-effort attempt, never retried or recorded (the next
    progress event, and the terminal one, supersede it)."""
    now = utcnow()
    body = json.dumps({"type": "job.progress", "timestamp": now.isoformat(), "data": job.public()}).encode()
    msg_id, stamp = f"msg_{job.id}_p{now.timestamp():.3f}", int(now.timestamp())
    try:
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(webhook_secret(svc), msg_id, stamp, body)}
        _send(svc)(job.webhook_url or "", body, headers)
    except MediaError as exc:
        logs.event(log, "webhook.progress_failed", job_id=job.id, phase="webhook", error=exc.message)


def deliver_now(svc: Services, job_id: str, owner: str) -> None:
    """The first attempt right after the terminal transition; errors are logged, never raised."""
    try:
        delivery = svc.store.webhook(job_id)
        if delivery is not None:
            attempt(svc, delivery, owner)
    except Exception:
        log.exception("webhook for job %s: first attempt failed to run; the dispatcher will retry", job_id)
