"""GET /api/v2/jobs/{id}/events: the contract's live stream, derived from the job as the store holds it.

On connect: a `status` event, the latest `progress` and the latest `preview`. Then what changed, polled from
the store at most twice a second, each poll one round trip (record and progress, cancel flag, and the preview
while it runs or the queue depth and taken slot while it waits, together): `status` on every change (and
queue_position moves), `progress` snapshots, the newest `preview`, an `output` for each committed output (all of
them before the terminal `status`), and the stream ends after the terminal `status`. Streams also end after a time limit
(Modal's web requests last at most 150 s); the SDK reconnects, and since every snapshot is complete, the next
connect re-syncs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs.model import Job, Status
from comfy_saas.v2.views import TERMINAL, Live, outputs, progress, queue_position, v2_status

if TYPE_CHECKING:
    from comfy_saas.jobs.services import Services

POLL_S = 0.5
KEEPALIVE_S = 15.0  # well under the SDK's 45 s read timeout


@dataclass
class Seen:
    """What this stream has sent, so only changes go out."""

    status: tuple[str, int | None] | None = None
    progress: dict[str, Any] | None = None
    preview_seq: Any = None
    outputs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Poll:
    job: Job | None
    cancel_requested: bool
    preview: dict[str, Any] | None
    queue_depth: int | None
    taken_slot: int | None = None


def poll(svc: Services, job: Job) -> Poll:
    """One round trip: the job, its cancel flag, and what its last known status makes worth reading (its
    latest preview while it runs, its pool's queue depth and taken slot while it waits)."""
    running, queued = job.status is Status.RUNNING, job.status is Status.QUEUED
    got, flagged, preview, depth, taken = run_all([
        lambda: svc.store.get(job.id), lambda: svc.store.cancel_requested(job.id),
        lambda: svc.store.latest_preview(job.id) if running else None,
        lambda: svc.store.queue_depth(job.pool) if queued else None,
        lambda: svc.store.taken_slot(job.pool) if queued else None])
    return Poll(got, bool(flagged), preview, depth, taken)


def step(svc: Services, job: Job, seen: Seen) -> tuple[Job, list[str], bool]:
    """One poll and the events it adds: (the job as it now stands, the events, whether the stream is over).
    Blocking (store reads, and output assets' pointers and presigned URLs), so streams run it in the threadpool."""
    p = poll(svc, job)
    out, over = frames(svc, p, seen)
    return p.job or job, out, over


def frames(svc: Services, p: Poll, seen: Seen) -> tuple[list[str], bool]:
    """The events this poll adds to what was sent, and whether the stream is over. A status change leads,
    except the terminal one, which comes after every output and ends the stream."""
    job = p.job
    if job is None:  # deleted by retention while watched
        return [], True
    status = v2_status(job, p.cancel_requested)
    state = (status, queue_position(job, Live(p.cancel_requested, p.queue_depth, p.taken_slot)))
    changed = state != seen.status
    seen.status = state
    lead = [frame("status", {"status": state[0], "queue_position": state[1]})] if changed else []
    body = _progress(job, status, seen) + _preview(job, p.preview, seen) + _outputs(svc, job, seen)
    if status in TERMINAL:
        return body + lead, True
    return lead + body, False


def _progress(job: Job, status: str, seen: Seen) -> list[str]:
    snapshot = progress(job, status)
    if snapshot is None or snapshot == seen.progress:
        return []
    seen.progress = snapshot
    return [frame("progress", snapshot)]


def _preview(job: Job, preview: dict[str, Any] | None, seen: Seen) -> list[str]:
    if job.status is not Status.RUNNING or not preview or preview.get("seq") == seen.preview_seq:
        return []
    seen.preview_seq = preview.get("seq")
    return [frame("preview", preview_event(job, preview))]


def _outputs(svc: Services, job: Job, seen: Seen) -> list[str]:
    fresh = [out for out in job.outputs if out.key not in seen.outputs]  # rendered (presigned) only when new
    seen.outputs.update(out.key for out in fresh)
    return [frame("output", item) for item in outputs(svc, job, fresh)] if fresh else []


def preview_event(job: Job, preview: dict[str, Any]) -> dict[str, Any]:
    """The stored frame as the contract's PreviewEvent."""
    fmt = preview.get("format") or "jpeg"
    node = job.progress.node_id if job.progress and job.progress.node_id else ""
    return {"node_id": node, "content_type": f"image/{fmt}", "data_base64": preview.get("data_b64", "")}


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(svc: Services, job: Job, max_s: float, poll_s: float = POLL_S) -> AsyncIterator[str]:
    """The job's events until it ends or `max_s` passes."""
    loop = asyncio.get_running_loop()
    deadline, quiet_since, seen = loop.time() + max_s, loop.time(), Seen()
    while True:
        job, out, over = await run_in_threadpool(step, svc, job, seen)
        if out:
            quiet_since = loop.time()
            yield "".join(out)
        elif loop.time() - quiet_since > KEEPALIVE_S:
            quiet_since = loop.time()
            yield ": keepalive\n\n"
        if over or loop.time() > deadline:
            return
        await asyncio.sleep(poll_s)
