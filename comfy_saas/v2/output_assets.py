"""Jobs' outputs as Comfy API v2 assets, by the ids and pointers of jobs/output_ids.py.

The worker stores each output's pointer beside the output, so handing an id out writes nothing; an output stored
without one (by a worker from before that) has its pointer written before its id is first handed out. Reading the
asset goes through the job: whoever sees the job sees its outputs (a user its own, an operator every job), for as
long as the job is retained. Outputs are not hashed (`hash` is null, as the contract allows), so they are not
found by hash.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import AssetInUse, NotFound
from comfy_saas.jobs import output_ids
from comfy_saas.jobs.model import Job, Output
from comfy_saas.jobs.operations import Caller, visible_job
from comfy_saas.jobs.output_ids import is_output_id, output_id
from comfy_saas.jobs.services import Services
from comfy_saas.v2.assets import Content, signed_url, timestamp

__all__ = ["is_output_id", "output_assets", "output_content", "output_id", "output_view", "refuse_delete"]

OUTPUT_TYPES = {"image", "video", "audio", "text", "file", "latent"}
_MEMO_SIZE = 65_536

_written: OrderedDict[str, None] = OrderedDict()  # pointers this process wrote for outputs stored without one
_lock = threading.Lock()


def output_assets(svc: Services, job: Job, items: list[Output] | None = None) -> list[dict[str, Any]]:
    """The job's outputs (or those of `items`) as the contract's Output objects (asset ids, fresh URLs); every
    id is resolvable by GET /api/v2/assets/{id} once this returns."""
    chosen = job.outputs if items is None else items
    ids = [o.asset_id or output_id(job, o.key) for o in chosen]
    _remember(svc, job, [o for o in chosen if o.asset_id is None])
    return [_output(svc, job, o, i) for o, i in zip(chosen, ids, strict=True)]


def _remember(svc: Services, job: Job, unpointed: list[Output]) -> None:
    """Store the pointers of outputs stored without one that this process has not stored yet (idempotent
    writes, together)."""
    with _lock:
        missing = [o for o in unpointed if output_id(job, o.key) not in _written]
    written = run_all([lambda o=o: output_ids.store_pointer(svc.objects, job, o.key) for o in missing])
    with _lock:
        for i in written:
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
    pointer = output_ids.read_pointer(svc.objects, asset_id)
    if pointer is None:
        raise NotFound("no such asset")
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
