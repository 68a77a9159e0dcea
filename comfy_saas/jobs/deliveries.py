"""A webhook delivery as data: its states, the moves between them, and the rule that records an attempt.

A delivery is made once per terminal event and never fails the job. Sending lives in webhooks.py.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from comfy_saas.errors import IllegalTransition
from comfy_saas.jobs.model import Job


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# A pending delivery stays pending between retries; delivered and failed are final.
DELIVERY_TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.PENDING: frozenset({DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED}),
    DeliveryState.DELIVERED: frozenset(),
    DeliveryState.FAILED: frozenset(),
}


def new_delivery(job: Job, now: datetime) -> dict[str, Any]:
    """The delivery of a job's terminal event, due at once."""
    at = now.isoformat()
    return {"job_id": job.id, "event": f"job.{job.status.value}", "msg_id": f"msg_{job.id}", "url": job.webhook_url,
            "state": DeliveryState.PENDING.value, "attempts": [], "next_at": at, "created_at": at}


def due(delivery: dict[str, Any], now: datetime) -> bool:
    return delivery["state"] == DeliveryState.PENDING and datetime.fromisoformat(delivery["next_at"]) <= now


def settled(delivery: dict[str, Any] | None) -> bool:
    return delivery is None or delivery["state"] != DeliveryState.PENDING


def retry_delay_s(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with ±20% jitter: base, 2*base, 4*base, ..."""
    return base_s * (2 ** (attempt - 1)) * (rng or random).uniform(0.8, 1.2)


def record_attempt(delivery: dict[str, Any], entry: dict[str, Any], max_attempts: int, backoff_s: float,
                   now: datetime) -> dict[str, Any]:
    """Add one attempt's result and move the delivery on: delivered on a 2xx, failed when attempts are
    used up, else pending with the next retry time. Mutates and returns `delivery`."""
    current = DeliveryState(delivery["state"])
    delivery["attempts"].append(entry)
    ok = entry["status_code"] is not None and 200 <= entry["status_code"] < 300
    if ok:
        target = DeliveryState.DELIVERED
    elif len(delivery["attempts"]) >= max_attempts:
        target = DeliveryState.FAILED
    else:
        target = DeliveryState.PENDING
        delay = retry_delay_s(len(delivery["attempts"]), backoff_s)
        delivery["next_at"] = (now + timedelta(seconds=delay)).isoformat()
    if target not in DELIVERY_TRANSITIONS[current]:
        raise IllegalTransition(f"a {current.value} delivery cannot become {target.value}")
    delivery["state"] = target.value
    return delivery
