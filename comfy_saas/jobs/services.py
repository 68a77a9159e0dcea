"""The service container: one Settings object and everything built over it, in either home.

    Services.over(dict, queue, settings)   any Dict/Queue pair: Modal's, or the local twins
    local_services(settings)               the local home: SQLite twins and files under data_dir

Operations, the worker, the sweeper and operator commands all receive a Services; nothing below this
module knows which home it runs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comfy_saas.backends.guarded import Guarded
from comfy_saas.backends.model_files import LocalModelFiles
from comfy_saas.backends.objects import ObjectStore, object_store
from comfy_saas.backends.parallel import calls_are_round_trips
from comfy_saas.config import Settings
from comfy_saas.jobs import webhooks
from comfy_saas.jobs.lifecycle import Lifecycle
from comfy_saas.jobs.model import utcnow
from comfy_saas.jobs.store import JobStore


@dataclass
class Services:
    """What every operation needs: settings, the job store, object storage, the lifecycle's moves, and
    how to wake a worker pool (None where workers poll, as locally)."""

    settings: Settings
    store: JobStore
    objects: ObjectStore
    lifecycle: Lifecycle = field(init=False)
    wake: Callable[[str], None] | None = None
    model_files: LocalModelFiles | None = None  # the model cache's blobs; by default a folder from the settings

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.store, self.settings, on_delivery=self._first_delivery_attempt)
        if self.model_files is None:
            self.model_files = LocalModelFiles(self.settings.model_cache_dir())

    def _first_delivery_attempt(self, job_id: str, owner: str) -> None:
        webhooks.deliver_now(self, job_id, owner)

    @classmethod
    def over(cls, jobs: Any, work: Any, settings: Settings, objects: ObjectStore | None = None,
             wake: Callable[[str], None] | None = None, clock: Callable[[], datetime] = utcnow) -> Services:
        """Services over a Dict/Queue pair (behind the retry-and-map guard); object storage as the settings
        name it unless given."""
        objects = objects or object_store(settings)
        if any(getattr(backend, "round_trips", True) for backend in (jobs, work, objects)):
            calls_are_round_trips()  # Modal's objects, R2, the twins' Modal profile: batches run concurrently
        store = JobStore(Guarded(jobs, "job store"), Guarded(work, "work queue"), settings, clock)
        return cls(settings, store, objects, wake)


def local_services(settings: Settings) -> Services:
    """Store, queue and object storage under settings.data_dir (the twins in the configured profile:
    COMFY_TWIN_PROFILE=modal adds Modal's latency, expiry and limits)."""
    from comfy_saas.backends.twins import LocalDict, LocalQueue, profile_for

    db, profile = settings.data_dir / "state.sqlite3", profile_for(settings)
    settings.check_retention(entries_expire=profile.entry_ttl_s is not None)
    return Services.over(LocalDict(db, "jobs", profile), LocalQueue(db, "work", profile=profile), settings)
