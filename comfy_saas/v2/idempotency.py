"""`Idempotency-Key` on POST /api/v2/jobs, the Stripe way: the first request with a key claims it; a repeat of
the same body is answered with the job the first one made (`Idempotency-Replayed: true`); the same key with
another body is 422 `idempotency_key_reuse`; a repeat while the first is still being answered waits a moment,
then is 409 with Retry-After. Keys live 24 hours.

The claim is the store's one conditional write, `put(..., skip_if_exists=True)`, on a key of its own
(keys.v2_idempotency), so no v2 state goes into job records. A submission refused outright frees its key
(the contract: a legitimate retry may proceed); one whose outcome is unknown keeps it until it is abandoned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from comfy_saas import logs
from comfy_saas.backends.conditional import pop_if
from comfy_saas.backends.parallel import submit
from comfy_saas.errors import IdempotencyInFlight, IdempotencyKeyReuse, InvalidInput
from comfy_saas.jobs import keys

if TYPE_CHECKING:
    from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)

KEY_TTL = timedelta(hours=24)
ABANDONED_AFTER = timedelta(seconds=30)  # a claim whose request never finished is free again after this
WAIT_FOR_FIRST_S = 2.0
MAX_KEY_LEN = 255


@dataclass(frozen=True)
class Held:
    """This request owns the key (`entry` is what it wrote)."""

    dict_key: str
    entry: dict[str, Any]


def body_digest(body: dict[str, Any]) -> str:
    """What "the same request" means: the workflow and labels (extra_data is left out, as the contract says)."""
    same = {"workflow": body.get("workflow"), "metadata": body.get("metadata")}
    return hashlib.sha256(json.dumps(same, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_key(key: str) -> str:
    """The header value, 1-255 printable ASCII characters; InvalidInput naming the header otherwise."""
    if not 1 <= len(key) <= MAX_KEY_LEN or not key.isascii() or not key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable ASCII characters",
                           field="Idempotency-Key")
    return key


def claim(svc: Services, owner: str, key: str, digest: str) -> Held | str:
    """Held when this request owns the key; else the id of the job the first request with it made (to
    replay). IdempotencyKeyReuse for another body, IdempotencyInFlight while the first is unanswered."""
    dict_key, deadline = keys.v2_idempotency(owner, check_key(key)), time.monotonic() + WAIT_FOR_FIRST_S
    while True:
        entry = {"digest": digest, "nonce": uuid.uuid4().hex, "at": svc.store.clock().isoformat(), "job_id": None}
        if svc.store.d.put(dict_key, entry, skip_if_exists=True):
            return Held(dict_key, entry)
        current = svc.store.d.get(dict_key)
        if current is None:
            continue  # released or expired meanwhile: claim it again
        if current.get("nonce") == entry["nonce"]:
            return Held(dict_key, entry)  # our own write, reported lost by a retried call
        if _stale(svc, current):
            pop_if(svc.store.d, dict_key, lambda held, c=current: held.get("nonce") == c.get("nonce"))
            continue
        if current.get("digest") != digest:
            raise IdempotencyKeyReuse("this Idempotency-Key was already used with a different request body")
        if current.get("job_id"):
            return str(current["job_id"])
        if time.monotonic() > deadline:
            raise IdempotencyInFlight("the first request with this Idempotency-Key is still being answered; "
                                      "retry shortly", retry_after_s=1)
        time.sleep(0.05)


def _stale(svc: Services, entry: dict[str, Any]) -> bool:
    """Past its 24 hours, or a claim whose request never finished."""
    try:
        age = svc.store.clock() - datetime.fromisoformat(entry["at"])
    except (KeyError, TypeError, ValueError):
        return True
    return age > KEY_TTL or (not entry.get("job_id") and age > ABANDONED_AFTER)


def settle(svc: Services, held: Held, job_id: str) -> None:
    """Record the job the key made, in the background: a repeat arriving before it lands waits for it."""
    done = {**held.entry, "job_id": job_id}

    def write() -> None:
        try:
            svc.store.d.put(held.dict_key, done)
        except Exception as exc:  # the claim is abandoned after a while and a retry then makes a new job
            logs.event(log, "v2.idempotency_write_failed", logging.WARNING, job_id=job_id, error=str(exc))

    submit(write)


def release(svc: Services, held: Held) -> None:
    """Free the key of a request that was refused outright, so a corrected retry may use it."""
    try:
        pop_if(svc.store.d, held.dict_key, lambda e: e.get("nonce") == held.entry["nonce"])
    except Exception as exc:  # it is abandoned after ABANDONED_AFTER anyway
        logs.event(log, "v2.idempotency_release_failed", logging.WARNING, error=str(exc))

