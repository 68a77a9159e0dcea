"""Every stored output's id, the same on every read and in every container, and the pointer that finds its job.

An id is a UUIDv8 derived from the job and the output's object key: its top 16 bits are the job's creation day
(days since 1970), the rest a hash. The pointer, a small object under that day's folder (keys.output_asset), maps
the id back to the job and the key; it is deleted with the job's files by retention. The worker stores it beside
the output (Output.asset_id says it did), so a read that hands the id out never writes; the Comfy API v2 serves
outputs as assets by these ids (v2/output_assets.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOW_BITS = (1 << 112) - 1


def output_id(job: Job, key: str) -> str:
    """The id of the job's output stored under `key`."""
    days = (job.created_at.astimezone(UTC).date() - EPOCH.date()).days
    digest = int.from_bytes(hashlib.sha256(f"{job.id}\0{key}".encode()).digest()[:16], "big")
    n = (days << 112) | (digest & _LOW_BITS)
    n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8: vendor-defined
    n = (n & ~(0x3 << 62)) | (0x2 << 62)  # the RFC 9562 variant
    return str(uuid.UUID(int=n))


def is_output_id(asset_id: str) -> bool:
    """Whether the id has the form output_id makes (uploaded assets are UUIDv4)."""
    try:
        return uuid.UUID(asset_id).version == 8
    except (ValueError, TypeError, AttributeError):
        return False


def day_of(asset_id: str) -> datetime:
    """The creation day of the job an output id belongs to (where its pointer lies)."""
    return EPOCH + timedelta(days=uuid.UUID(asset_id).int >> 112)


def store_pointer(objects: Any, job: Job, key: str) -> str:
    """Store the pointer of the job's output under `key` (idempotent); its id."""
    asset_id = output_id(job, key)
    body = json.dumps({"job_id": job.id, "key": key}).encode()
    objects.put_bytes(keys.output_asset(job.created_at, asset_id), body, "application/json")
    return asset_id


def read_pointer(objects: Any, asset_id: str) -> dict[str, Any] | None:
    """{job_id, key} for an output id, None when no pointer is stored."""
    raw = objects.read_if_exists(keys.output_asset(day_of(asset_id), asset_id))
    return None if raw is None else json.loads(raw)
