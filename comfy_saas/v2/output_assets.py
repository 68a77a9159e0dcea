"""Jobs' outputs as Comfy API v2 assets, without the worker knowing about assets.

An output's asset id is a UUIDv8 derived from the job and the output's object key, so it is the same on every
read and every container: its top 16 bits are the job's creation day (days since 1970), the rest a hash. The
id is mapped back to its output by a small pointer object under that day's folder (keys.output_asset), written
before the id is first handed out (output_assets) and deleted with the job's files by retention. Reading the
asset goes through the job: whoever sees the job sees its outputs (a user its own, an operator every job),
for as long as the job is retained. Outputs are not hashed (`hash` is null, as the contract allows), so they
are not found by hash.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import AssetInUse, NotFound
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job, Output
from comfy_saas.jobs.operations import Caller, visible_job
from comfy_saas.jobs.services import Services
from comfy_saas.v2.assets import Content, signed_url, timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OUTPUT_TYPES = {"image", "video", "audio", "text", "file", "latent"}
_LOW_BITS = (1 << 112) - 1
_MEMO_SIZE = 65_536

_written: OrderedDict[str, None] = OrderedDict()  # pointers this process knows are stored
_lock = threading.Lock()


def output_id(job: Job, key: str) -> str:
    """The asset id of the job's output stored under `key`."""
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


def _day(asset_id: str) -> datetime:
    return EPOCH + timedelta(days=uuid.UUID(asset_id).int >> 112)


def output_assets(svc: Services, job: Job, items: list[Output] | None = None) -> list[dict[str, Any]]:
    """The job's outputs (or those of `items`) as the contract's Output objects (asset ids, fresh URLs); every
    id is resolvable by GET /api/v2/assets/{id} once this returns."""
    chosen = job.outputs if items is None else items
    ids = [output_id(job, o.key) for o in chosen]
    _remember(svc, job, chosen, ids)
    return [_output(svc, job, o, i) for o, i in zip(chosen, ids, strict=True)]


def _remember(svc: Services, job: Job, chosen: list[Output], ids: list[str]) -> None:
    """Store the pointers this process has not stored yet (idempotent writes, together)."""
    with _lock:
        missing = [(o, i) for o, i in zip(chosen, ids, strict=True) if i not in _written]
    def pointer(out: Output, asset_id: str) -> None:
        body = json.dumps({"job_id": job.id, "key": out.key}).encode()
        svc.objects.put_bytes(keys.output_asset(job.created_at, asset_id), body, "application/json")

    run_all([lambda o=o, i=i: pointer(o, i) for o, i in missing])
    with _lock:
        for _, i in missing:
            _written[i] = None
        while len(_written) > _MEMO_SIZE:
            _written.popitem(last=False)


def _output(svc: Services, job: Job, out: Output, asset_id: str) -> dict[str, Any]:
    url, url_expires_at = signed_url(svc, out.key)
    return {"node_id": out.node_id, "name": out.filename, "type": out.kind if out.kind in OUTPUT_TYPES else "file",
            "content_type": out.content_type, "size_bytes": out.size_bytes, "id": asset_id, "hash": None,
            "url": url, "url_expires_at": url_expires_at, "job_id": job.id}


def _find(svc: Services, caller: Caller, asset_id: str) -> tuple[Job, Output]:
    """The visible job and its output an output asset id stands for; NotFound otherwise (never says which)."""
    raw = svc.objects.read_if_exists(keys.output_asset(_day(asset_id), asset_id))
    if raw is None:
        raise NotFound("no such asset")
    pointer = json.loads(raw)
    try:
        job = visible_job(svc, caller, pointer["job_id"])
    except NotFound:
        raise NotFound("no such asset") from None
    out = next((o for o in job.outputs if o.key == pointer["key"]), None)
    if out is None:
        raise NotFound("no such asset")
    return job, out


def output_view(svc: Services, caller: Caller, asset_id: str) -> dict[str, Any]:
    """The contract's Asset for an output asset."""
    job, out = _find(svc, caller, asset_id)
    url, url_expires_at = signed_url(svc, out.key)
    created = job.finished_at or job.created_at
    day = datetime(job.created_at.year, job.created_at.month, job.created_at.day, tzinfo=UTC)
    expires = day + timedelta(days=svc.settings.retention_days + 1)  # when retention deletes the day's files
    return {"id": asset_id, "hash": None, "size_bytes": out.size_bytes, "content_type": out.content_type,
            "file_path": out.filename, "created_at": timestamp(created), "url": url, "url_expires_at": url_expires_at,
            "expires_at": timestamp(expires), "job_id": job.id}


def output_content(svc: Services, caller: Caller, asset_id: str) -> Content:
    _, out = _find(svc, caller, asset_id)
    return Content(out.key, out.size_bytes, out.content_type, out.filename)


def refuse_delete(svc: Services, caller: Caller, asset_id: str) -> None:
    """Outputs are held by their job: AssetInUse when the caller sees it, NotFound otherwise."""
    _find(svc, caller, asset_id)
    raise AssetInUse("this asset cannot be deleted while the platform depends on it")
