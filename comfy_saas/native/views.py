"""Our jobs in ComfyUI's shapes: history entries, queue tuples, `executed` outputs, the newer /api/jobs items,
and the status messages a history entry carries. Pure functions over a Prompt (records.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from comfy_saas.jobs.model import Job, Output, Status
from comfy_saas.native.records import Prompt

# ComfyUI's /api/jobs statuses for ours.
JOBS_STATUS = {Status.QUEUED: "pending", Status.RUNNING: "in_progress", Status.COMPLETED: "completed",
               Status.FAILED: "failed", Status.CANCELLED: "cancelled"}
_MEDIA_KEY = {"image": "images", "video": "images", "audio": "audio"}


def ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def subfolder_of(prompt_id: str, node_id: str) -> str:
    """Where /view finds a prompt's output: the prompt, then the node (so equal file names never clash)."""
    return f"{prompt_id}/{node_id}"


def file_ref(prompt_id: str, out: Output) -> dict[str, Any]:
    return {"filename": out.filename, "subfolder": subfolder_of(prompt_id, out.node_id), "type": "output"}


def outputs_by_node(job: Job) -> dict[str, dict[str, Any]]:
    """The job's outputs as ComfyUI's history and `executed` give them: per node, {images|audio|files: [refs]}."""
    nodes: dict[str, dict[str, Any]] = {}
    for out in job.outputs:
        entry = nodes.setdefault(out.node_id, {})
        entry.setdefault(_MEDIA_KEY.get(out.kind, "files"), []).append(file_ref(job.id, out))
        if out.kind == "video":
            entry["animated"] = [True]
    return nodes


def cached_nodes(job: Job) -> list[str]:
    return [node for node, timing in (job.timings.nodes.items() if job.timings else []) if timing.cached]


def start_data(job: Job) -> dict[str, Any]:
    return {"prompt_id": job.id, "timestamp": ms(job.started_at or job.created_at)}


def terminal_message(job: Job) -> tuple[str, dict[str, Any]]:
    """The event that ended the prompt, as ComfyUI names it, with its data."""
    stamp = {"prompt_id": job.id, "timestamp": ms(job.finished_at)}
    if job.status is Status.COMPLETED:
        return "execution_success", stamp
    error = job.error
    node = {"node_id": error.node_id if error else None, "node_type": error.node_class if error else None,
            "executed": [o for o in dict.fromkeys(o.node_id for o in job.outputs)]}
    if job.status is Status.CANCELLED or (error is not None and error.type == "interrupted"):
        return "execution_interrupted", {**stamp, **node}
    kind, _, message = (error.message if error else "failed").partition(": ")
    if not message:
        kind, message = (error.type if error else "Error"), kind
    return "execution_error", {**stamp, **node, "exception_message": message, "exception_type": kind,
                               "traceback": [], "current_inputs": {}, "current_outputs": []}


def status_messages(job: Job) -> list[list[Any]]:
    """status.messages of a finished prompt's history entry."""
    messages: list[list[Any]] = []
    if job.started_at is not None:
        messages.append(["execution_start", start_data(job)])
        messages.append(["execution_cached", {"nodes": cached_nodes(job), **start_data(job)}])
    messages.append(list(terminal_message(job)))
    return messages


def extra_data(prompt: Prompt, kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """The prompt's extra_data as ComfyUI's history gives it: what the client sent, with create_time."""
    extra: dict[str, Any] = {**(kept or {}), "create_time": prompt.created_ms}
    if prompt.client_id is not None:
        extra["client_id"] = prompt.client_id
    return extra


def queue_item(prompt: Prompt, workflow: dict[str, Any], output_nodes: list[str],
               kept: dict[str, Any] | None = None) -> list[Any]:
    """ComfyUI's queue tuple: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    return [prompt.number, prompt.id, workflow, extra_data(prompt, kept), output_nodes]


def history_entry(prompt: Prompt, workflow: dict[str, Any], output_nodes: list[str],
                  kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """A finished prompt's /history entry (call only for finished jobs)."""
    job = prompt.job
    assert job is not None and job.terminal
    ok = job.status is Status.COMPLETED
    return {"prompt": queue_item(prompt, workflow, output_nodes, kept),
            "outputs": outputs_by_node(job),  # a failed prompt keeps what its nodes wrote, as ComfyUI's does
            "status": {"status_str": "success" if ok else "error", "completed": ok,
                       "messages": status_messages(job)},
            "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                     for node in outputs_by_node(job)}}


def jobs_item(prompt: Prompt, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One prompt as ComfyUI's /api/jobs lists it; `detail` adds what /api/jobs/{id} shows."""
    job = prompt.job
    assert job is not None
    item: dict[str, Any] = {"id": prompt.id, "status": JOBS_STATUS[job.status], "priority": prompt.number,
                            "create_time": prompt.created_ms, "outputs_count": len(job.outputs),
                            "previewable_outputs_count": sum(o.kind in _MEDIA_KEY for o in job.outputs)}
    if job.started_at is not None:
        item["execution_start_time"] = ms(job.started_at)
    if job.terminal:
        item["execution_end_time"] = ms(job.finished_at)
        event, data = terminal_message(job)
        if event == "execution_error":
            item["execution_error"] = data
    preview = next((o for o in job.outputs if o.kind in _MEDIA_KEY), None)
    if preview is not None:
        item["preview_output"] = {**file_ref(job.id, preview), "nodeId": preview.node_id,
                                  "mediaType": _MEDIA_KEY[preview.kind]}
    return {**item, **(detail or {})}
