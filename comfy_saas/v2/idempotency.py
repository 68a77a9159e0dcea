"""`Idempotency-Key` on POST /api/v2/jobs, the Stripe way: a repeat of the same request gets the job the first one
made (`Idempotency-Replayed: true`); the same key with another request is 422 `idempotency_key_reuse`; a repeat
while the first is still being stored waits for it, and past that wait is 409 with Retry-After. Keys live 24 h.

A submission's idempotency key belongs to its job as on /v1 (the job's `idempotency_key`, prefixed `v2:` so the
two surfaces' keys never meet): the lifecycle claims it with the store's one conditional write when it creates
the job, frees it when the submission is refused, and retention deletes it with the job. This module only
translates: the contract's header, its 24 hours, its codes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from comfy_saas.backends.conditional import pop_if
from comfy_saas.errors import InvalidInput
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job

if TYPE_CHECKING:
    from comfy_saas.jobs.services import Services

PREFIX = "v2:"
KEY_TTL = timedelta(hours=24)
MAX_KEY_LEN = 252  # a job's idempotency_key holds 255 characters, the prefix included


def job_key(header: str) -> str:
    """The job's idempotency key for an Idempotency-Key header (1-252 printable ASCII characters)."""
    if not 1 <= len(header) <= MAX_KEY_LEN or not header.isascii() or not header.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable ASCII characters",
                           field="Idempotency-Key")
    return PREFIX + header


def expired(svc: Services, job: Job) -> bool:
    """Whether the key of this (earlier) job is past its 24 hours: a repeat then makes a new job."""
    return svc.store.clock() - job.created_at > KEY_TTL


def free(svc: Services, job: Job) -> None:
    """Release an expired key from the job that holds it (only if it still does), so a new job may claim it."""
    if job.idempotency_key:
        pop_if(svc.store.d, keys.idempotency(job.user_id, job.idempotency_key),
               lambda held: held.get("job_id") == job.id)


def in_flight(svc: Services, user_id: str | None, key: str) -> bool:
    """Whether a submission holds the key (after a refusal that freed it, nobody does)."""
    return svc.store.d.get(keys.idempotency(user_id, key)) is not None
