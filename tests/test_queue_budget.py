"""A pool's queue partition under Modal's two caps, 5,000 items and 64 MiB: waiting jobs with the largest
inline payloads still fit 5,000 to a partition, and the next submit is a 429, never Modal's error."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from conftest import WORKFLOW

from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile
from comfy_saas.config import Settings
from comfy_saas.errors import QueueFull
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import new_job_id, utcnow
from comfy_saas.jobs.payloads import INLINE_MAX_BYTES
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import WAKEUP_RECORD_MAX_BYTES, Job

MODAL_ITEMS, MODAL_PARTITION_BYTES = 5_000, 64 * 1024 * 1024


def _services(db: Path, settings: Settings, items: int) -> Services:
    """The twins' Modal profile with a partition of `items` items and the bytes Modal gives that many."""
    profile = Profile.modal(rpc_ms=0, max_partition_bytes=MODAL_PARTITION_BYTES * items // MODAL_ITEMS)
    objects = LocalStore(settings.data_dir / "objects", "s", "http://127.0.0.1:9")
    return Services.over(LocalDict(db, "jobs", profile), LocalQueue(db, "work", items, profile), settings, objects)


def _big_request() -> JobRequest:
    """A job with an inline workflow just under the inline cap and the most metadata allowed."""
    workflow = {**WORKFLOW, "3": {"class_type": "Note", "inputs": {"text": "w" * (INLINE_MAX_BYTES - 400)}}}
    return JobRequest(workflow=workflow, metadata={"note": "m" * 8000}, webhook_url="https://example.com/" + "h" * 1900)


def test_a_partition_holds_its_item_count_of_jobs_with_the_largest_payloads(db_path: Path, tmp_path: Path):
    items = 60
    svc = _services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s", max_active_jobs=1000), items)
    request = _big_request()
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides", "models"})
    jobs = [svc.lifecycle.create(request, payload)[0] for _ in range(items)]
    assert svc.store.queue_depth("default") == items
    with pytest.raises(QueueFull) as full:  # the item cap binds first, and it is a 429 with Retry-After
        svc.lifecycle.create(request, payload)
    assert full.value.retry_after_s
    wakeup = svc.store.next_wakeup("default", 1)
    assert wakeup.job == jobs[0]  # the record rides along: a worker starts it without reading it
    assert svc.store.payload(wakeup.job_id)["workflow"] == request.workflow  # the payload is found by id


def test_5000_of_the_largest_wakeups_fit_a_modal_partition_and_the_next_is_a_429(db_path: Path, tmp_path: Path):
    now = utcnow()
    job = Job(id=new_job_id(), created_at=now, updated_at=now, metadata={"k": ""})
    pad = WAKEUP_RECORD_MAX_BYTES - len(Job.model_validate(job.to_record()).model_dump_json())
    job = job.model_copy(update={"metadata": {"k": "x" * pad}})  # the largest record a wake-up carries
    profile = Profile.modal(rpc_ms=0)  # Modal's own caps: 5,000 items, 64 MiB
    queue = LocalQueue(db_path, "work", profile=profile)
    svc = Services.over(LocalDict(db_path, "jobs", profile), queue, Settings(data_dir=tmp_path))
    item = svc.store.wakeup_item(job)
    assert item["job"] == job.to_record()
    assert len(pickle.dumps(item)) * MODAL_ITEMS <= MODAL_PARTITION_BYTES  # Modal pickles queue items
    queue.put_many([item] * MODAL_ITEMS, partition=keys.partition("default"))  # one call: one budget check
    with pytest.raises(QueueFull):
        svc.store.enqueue(job)
    assert svc.store.queue_depth("default") == MODAL_ITEMS


def test_a_record_too_large_to_carry_wakes_by_id_and_the_worker_finds_it(db_path: Path, tmp_path: Path):
    svc = _services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s"), 10)
    request = _big_request()
    payload = request.model_dump(mode="json", include={"workflow", "media", "overrides", "models"})
    job, _ = svc.lifecycle.create(request, payload)
    svc.store.next_wakeup("default", 1)
    big = job.model_copy(update={"workflow_warnings": ["w" * 1000] * 20})  # a record past the budget
    svc.store.write_record(big)
    svc.store.enqueue(big)
    wakeup = svc.store.next_wakeup("default", 1)
    assert wakeup.job is None and wakeup.job_id == job.id
    assert svc.store.get(wakeup.job_id) == big and svc.store.d.contains(keys.payload(job.id))
