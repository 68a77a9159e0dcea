"""What a job is: its status and the lifecycle table, its record, and the timeout and retry rules as pure
predicates that take `now`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comfy_saas.errors import IllegalTransition


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.RUNNING})

# running -> queued is the requeue after a lost worker; terminal states have no way out.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.QUEUED, Status.COMPLETED, Status.FAILED, Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


def check_transition(current: Status, target: Status) -> None:
    """Raise IllegalTransition unless the lifecycle allows current -> target."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"a {current.value} job cannot become {target.value}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


# --- the job as stored and returned -----------------------------------------------------------


class Progress(BaseModel):
    percent: float = 0.0
    node_id: str | None = None
    node_class: str | None = None
    step: int | None = None
    steps: int | None = None
    nodes_done: int = 0
    nodes_total: int | None = None
    eta_s: float | None = None
    phase: str | None = Field(default=None, description="download while this job fetches a model file, "
                                                         "download_wait while another job fetches one it needs")
    file: str | None = Field(default=None, description="the model file being downloaded (folder/name)")
    bytes_done: int | None = None
    bytes_total: int | None = None


class Output(BaseModel):
    node_id: str
    kind: str = Field(description="image, video, audio, text or file")
    filename: str
    key: str = Field(description="Object key in storage")
    content_type: str
    size_bytes: int
    url: str | None = Field(default=None, description="Presigned download URL, refreshed on every read")
    asset_id: str | None = Field(default=None, description="Its id as a Comfy API v2 asset (GET /api/v2/assets/{id}); "
                                                           "set once the pointer that finds it is stored")


class NodeTiming(BaseModel):
    ms: float
    cached: bool = False


class Timings(BaseModel):
    """Where a job's time went; the phases add up to total_ms."""

    start_kind: str = Field(description="restored (from a memory snapshot), launched (first job after "
                                        "ComfyUI started) or warm")
    queue_wait_ms: float
    prepare_ms: float = Field(description="fetching media, uploading it to ComfyUI, overrides")
    execute_ms: float = Field(description="ComfyUI running the prompt, submit to success")
    upload_ms: float = Field(description="copying outputs to object storage")
    finish_ms: float = Field(description="the rest, up to the terminal write")
    total_ms: float = Field(description="created to finished")
    nodes: dict[str, NodeTiming] = Field(default_factory=dict, description="per node; cached nodes took 0 ms")
    warmup_ms: float | None = Field(default=None, description="the warmup workflow this worker ran before its "
                                                              "first job (not part of this job's total)")
    download_ms: float | None = Field(default=None, description="getting the job's model files: downloads, waits "
                                                                "for other jobs' downloads, cache hits")
    download_bytes: int | None = Field(default=None, description="bytes this job downloaded (0: all cached)")


class JobError(BaseModel):
    type: str
    message: str
    node_id: str | None = None
    node_class: str | None = None
    details: list[dict[str, Any]] = Field(default_factory=list)


class OutputOptions(BaseModel):
    """How still images are stored: converted to png, webp or jpeg, or kept as ComfyUI wrote them."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["original", "png", "webp", "jpeg"] = "original"
    quality: int | None = Field(default=None, ge=1, le=100, description="webp/jpeg quality (default 80 / 90)")


class SeedDrawn(BaseModel):
    """A seed drawn at submit for an input given -1 or "random"."""

    node: str
    input: str
    value: int
    name: str | None = Field(default=None, description="the template input it was given for")


# Fields that drive the store's bookkeeping and are not part of the public view.
_PRIVATE_FIELDS = {"claim_seq", "active_slots", "index_slots"}


class Job(BaseModel):
    """A job record. Stored as plain JSON under its own key; the workflow body lives elsewhere."""

    id: str
    status: Status = Status.QUEUED
    user_id: str | None = None
    pool: str = "default"
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    claim_seq: int = 0
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    progress: Progress | None = None
    outputs: list[Output] = Field(default_factory=list)
    error: JobError | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    timeout_s: int | None = None
    include_previews: bool = False
    webhook_progress: bool = False
    timings: Timings | None = None
    active_slots: dict[str, int] = Field(default_factory=dict)
    index_slots: dict[str, int] = Field(default_factory=dict)  # scope -> its listing slot, deleted with the job
    workflow_format: str = Field(default="api", description="the format submitted: api, or ui (converted at submit)")
    template: str | None = Field(default=None, description="the workflow template the job was made from")
    seeds: list[SeedDrawn] = Field(default_factory=list, description="seeds drawn at submit")
    output: OutputOptions | None = None
    workflow_warnings: list[str] = Field(default_factory=list, description="what UI-format conversion noticed")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-compatible dict for the Dict (never pickle library objects)."""
        return self.model_dump(mode="json")

    def public(self) -> dict[str, Any]:
        """The job as the API returns it."""
        return self.model_dump(mode="json", exclude=_PRIVATE_FIELDS)

    # Pure predicates: callers pass `now`, so tests and the sweeper agree on time.
    def heartbeat_stale(self, now: datetime, stale_after_s: float) -> bool:
        last = self.heartbeat_at or self.started_at or self.updated_at
        return self.status is Status.RUNNING and now - last > timedelta(seconds=stale_after_s)

    def run_timed_out(self, now: datetime, default_timeout_s: int) -> bool:
        limit = timedelta(seconds=self.timeout_s or default_timeout_s)
        return self.status is Status.RUNNING and self.started_at is not None and now - self.started_at > limit

    def queue_timed_out(self, now: datetime, queue_timeout_s: int) -> bool:
        return self.status is Status.QUEUED and now - self.created_at > timedelta(seconds=queue_timeout_s)

    def retryable(self, max_attempts: int) -> bool:
        return self.attempts < max_attempts
