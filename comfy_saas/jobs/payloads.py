"""What a job runs, kept small in the Dict: large parts (base64 media, big workflows) go to object storage
under the job's own prefix, and the Dict keeps references. They are deleted with the job's outputs, by
the day prefix (see keys.object_day), without reading any record.

A job's Dict footprint stays under about 64 KB whatever it carries (media up to the per-job limit).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from comfy_saas.backends.objects import ObjectStore
from comfy_saas.jobs import keys
from comfy_saas.jobs.request import MediaInput

INLINE_MAX_BYTES = 32 * 1024  # the workflow and overrides stay in the Dict up to this size as JSON


EXTRA_INLINE_MAX_BYTES = 2048  # a partner-node key fits; an editor graph (extra_pnginfo) goes to object storage


def pack(objects: ObjectStore, job_id: str, created: datetime, workflow: dict[str, Any],
         overrides: list[dict[str, Any]], media: list[MediaInput], models: list[dict[str, Any]] | None = None,
         extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The payload to store for a job (the API-format workflow that runs, its overrides, media and model
    files, and the prompt's ComfyUI `extra_data`), uploading its large parts first."""
    refs = [_media_ref(objects, job_id, created, i, m) for i, m in enumerate(media)]
    graph = {"workflow": workflow, "overrides": overrides}
    raw = json.dumps(graph, separators=(",", ":")).encode()
    small: dict[str, Any] = {"media": refs, "models": models or []}
    if extra_data:
        # Secrets for the prompt (a partner-node API key): only the worker reads them, to hand them to ComfyUI
        # with the prompt; never the job record, a view or a log. Deleted with the job's payload. A large one
        # (the editor's whole graph as extra_pnginfo) goes to object storage like a large workflow.
        small.update(_extra_part(objects, job_id, created, extra_data))
    if len(raw) <= INLINE_MAX_BYTES:
        return {**graph, **small}
    key = keys.input_object(job_id, created, "workflow.json")
    objects.put_bytes(key, raw, "application/json")
    return {"graph_ref": key, **small}


def _media_ref(objects: ObjectStore, job_id: str, created: datetime, i: int, media: MediaInput) -> dict[str, Any]:
    if media.object_key is not None:  # already in object storage: the worker reads it there, nothing is copied
        return {"name": media.name, "ref": media.object_key, "size": media._object_size}
    if media.base64 is None:
        return {"name": media.name, "url": media.url}
    data = media.decoded()
    key = keys.input_object(job_id, created, f"media-{i}")
    objects.put_bytes(key, data, "application/octet-stream")
    return {"name": media.name, "ref": key, "size": len(data)}


def _extra_part(objects: ObjectStore, job_id: str, created: datetime, extra: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(extra, separators=(",", ":")).encode()
    if len(raw) <= EXTRA_INLINE_MAX_BYTES:
        return {"extra_data": extra}
    key = keys.input_object(job_id, created, "extra_data.json")
    objects.put_bytes(key, raw, "application/json")
    return {"extra_data_ref": key}


def extra_data(objects: ObjectStore, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ComfyUI `extra_data` the job's prompt is submitted with (None without any)."""
    if "extra_data_ref" in payload:
        return json.loads(objects.read(payload["extra_data_ref"]))
    return payload.get("extra_data") or None


def graph(objects: ObjectStore, payload: dict[str, Any]) -> dict[str, Any]:
    """{"workflow", "overrides"} of a stored payload, fetched from object storage when it was too large."""
    if "graph_ref" in payload:
        return json.loads(objects.read(payload["graph_ref"]))
    return {"workflow": payload["workflow"], "overrides": payload.get("overrides", [])}


def media_bytes(objects: ObjectStore, item: dict[str, Any]) -> bytes | None:
    """The bytes of a submitted media item kept in object storage; None for one given by URL."""
    if "ref" in item:
        return objects.read(item["ref"])
    if item.get("base64") is not None:  # a payload stored before media moved out of the Dict
        return MediaInput.model_validate(item).decoded()
    return None
