"""Sending webhook deliveries: signed with Standard Webhooks headers, retried with backoff, never failing
the job. Exactly one sender makes each attempt (claimed with skip_if_exists), and every attempt is
recorded on the delivery (time, status code, error). The delivery's states live in deliveries.py.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from comfy_saas import logs, signing
from comfy_saas.backends import safe_fetch
from comfy_saas.errors import MediaError
from comfy_saas.jobs import watchlist
from comfy_saas.jobs.deliveries import due, record_attempt
from comfy_saas.jobs.model import Job, utcnow
from comfy_saas.jobs.views import job_view

if TYPE_CHECKING:  # the container sits above; only its shape is used here
    from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)

Sender = Callable[[str, bytes, dict[str, str]], int]


def webhook_secret(svc: Services) -> str:
    """The configured secret; locally, one derived from the data dir's URL signing key. Deployed
    without one, deliveries fail (recorded on the job) rather than go out with an unverifiable signature."""
    if svc.settings.webhook_secret:
        return svc.settings.webhook_secret
    if svc.settings.storage_backend != "local":
        raise MediaError("COMFY_WEBHOOK_SECRET is not set; webhooks cannot be signed")
    from comfy_saas.backends.objects import local_secret

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
    now = now or svc.store.clock()
    if not due(delivery, now):
        return False
    n = len(delivery["attempts"]) + 1
    if not svc.store.claim_webhook_attempt(delivery["job_id"], n, owner):
        return _recover_lost_attempt(svc, delivery, n, now)
    body = _payload(svc, delivery, now)
    status, error = None, None
    try:
        signed = signing.headers(webhook_secret(svc), delivery["msg_id"], int(now.timestamp()), body)
        status = (send or _send(svc))(delivery["url"], body, signed)
    except MediaError as exc:  # refused (SSRF) or unreachable: a failed attempt, never a failed job
        error = exc.message
    _record(svc, delivery, {"n": n, "at": now.isoformat(), "status_code": status, "error": error}, now)
    logs.event(log, "webhook.attempt", job_id=delivery["job_id"], attempt=n, worker_id=owner, phase="webhook",
               status=delivery["state"], error=error or (None if status and status < 300 else f"HTTP {status}"))
    return True


def _record(svc: Services, delivery: dict[str, Any], entry: dict[str, Any], now: datetime) -> None:
    record_attempt(delivery, entry, svc.settings.webhook_max_attempts, svc.settings.webhook_backoff_s, now)
    svc.store.save_webhook(delivery)
    ok = entry["status_code"] is not None and 200 <= entry["status_code"] < 300
    svc.lifecycle.counters.delivery(delivery["state"], ok)


def _recover_lost_attempt(svc: Services, delivery: dict[str, Any], n: int, now: datetime) -> bool:
    claim = svc.store.webhook_attempt_claim(delivery["job_id"], n) or {}
    claimed_at = datetime.fromisoformat(claim.get("at", now.isoformat()))
    # A sender gives up after webhook_timeout_s; one silent for twice that (and a little) died with its attempt.
    if (now - claimed_at).total_seconds() < 2 * svc.settings.webhook_timeout_s + 5:
        return False  # someone is sending it right now
    _record(svc, delivery, {"n": n, "at": now.isoformat(), "status_code": None, "error": "sender lost"}, now)
    return True


def dispatch(svc: Services, owner: str = "dispatcher", now: datetime | None = None,
             send: Sender | None = None) -> Counter:
    """Attempt every due delivery the sweeper keeps watching (it adds pending ones and drops settled ones)."""
    done: Counter = Counter()
    for delivery in watchlist.pending_deliveries(svc.store):
        if attempt(svc, delivery, owner, now, send):
            done[delivery["state"]] += 1  # attempt() records into this same dict
    return done


def send_progress(svc: Services, job: Job) -> None:
    """A signed `job.progress` event: one best-effort attempt, never retried or recorded (the next
    progress event, and the terminal one, supersede it)."""
    now = utcnow()
    body = json.dumps({"type": "job.progress", "timestamp": now.isoformat(), "data": job.public()}).encode()
    msg_id = f"msg_{job.id}_p{now.timestamp():.3f}"
    try:
        _send(svc)(job.webhook_url or "", body, signing.headers(webhook_secret(svc), msg_id, int(now.timestamp()),
                                                                body))
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
