"""The job store: lifecycle, claims, exactly-once outcomes, idempotency, cancel and listing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from errors import Conflict, IllegalTransition, InvalidInput, NotOwner, QueueFull
from models import TRANSITIONS, JobRequest, Output, Progress, Status, new_job, utcnow
from storage import JobStore, Keys
from twins import LocalDict, LocalQueue

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}


def request(**extra: Any) -> JobRequest:
    return JobRequest(workflow=WORKFLOW, **extra)


def job_in(store: JobStore, status: Status) -> tuple[str, int]:
    """A job brought to `status` the way the system would; (job id, current claim)."""
    job, _ = store.submit(request())
    if status is Status.QUEUED:
        return job.id, 0
    claim = store.claim(job, "worker-a")
    store.transition(job.id, Status.RUNNING, claim=claim, worker_id="worker-a")
    if status is not Status.RUNNING:
        store.transition(job.id, status, claim=claim)
    return job.id, claim


def test_submit_stores_a_small_record_the_workflow_apart_and_enqueues(store: JobStore, db_path):
    job, created = store.submit(request(pool="gpu-a", metadata={"order": 7}))
    assert created and job.status is Status.QUEUED
    d = LocalDict(db_path)
    assert "workflow" not in d[Keys.job(job.id)]
    assert store.payload(job.id)["workflow"] == WORKFLOW
    assert store.get(job.id).metadata == {"order": 7}
    assert LocalQueue(db_path).get(block=False, partition="gpu-a") == job.id


LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in targets]
ILLEGAL = [(a, b) for a in Status for b in Status if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("start", "target"), LEGAL)
def test_every_legal_transition_works(store: JobStore, start: Status, target: Status):
    job_id, claim = job_in(store, start)
    if start is Status.QUEUED:
        claim = store.claim(store.get(job_id), "worker-b")
    moved = store.transition(job_id, target, claim=claim)
    assert moved.status is target and store.get(job_id).status is target


@pytest.mark.parametrize(("start", "target"), ILLEGAL)
def test_every_illegal_transition_raises(store: JobStore, start: Status, target: Status):
    job_id, claim = job_in(store, start)
    with pytest.raises(IllegalTransition):
        store.transition(job_id, target, claim=max(claim, 1))
    assert store.get(job_id).status is start


def test_status_stamps_follow_the_rules(store: JobStore):
    job_id, claim = job_in(store, Status.RUNNING)
    running = store.get(job_id)
    assert running.attempts == 1 and running.started_at and running.heartbeat_at
    done = store.transition(job_id, Status.COMPLETED, claim=claim,
                            outputs=[Output(node_id="2", kind="image", filename="a.png", key=f"{job_id}/2/a.png",
                                            content_type="image/png", size_bytes=3)])
    assert done.finished_at and store.get(job_id).outputs[0].key == f"{job_id}/2/a.png"


def test_two_claimers_of_one_attempt_get_one_winner(store: JobStore):
    job, _ = store.submit(request())
    barrier = threading.Barrier(8)

    def claim(i: int) -> int | None:
        barrier.wait()
        return store.claim(job, f"worker-{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))
    assert sum(r is not None for r in results) == 1


def test_terminal_outcome_is_decided_exactly_once(store: JobStore):
    job_id, claim = job_in(store, Status.RUNNING)
    barrier = threading.Barrier(6)
    targets = [Status.COMPLETED, Status.FAILED, Status.CANCELLED] * 2

    def finish(target: Status) -> Status | None:
        barrier.wait()
        try:
            return store.transition(job_id, target, claim=claim).status
        except IllegalTransition:
            return None

    with ThreadPoolExecutor(6) as pool:
        winners = [s for s in pool.map(finish, targets) if s is not None]
    assert len(winners) == 1
    assert store.get(job_id).status is winners[0]


def test_a_late_non_terminal_write_cannot_undo_a_terminal_outcome(store: JobStore, db_path):
    job_id, claim = job_in(store, Status.RUNNING)
    stale_view = store.get(job_id)
    store.transition(job_id, Status.COMPLETED, claim=claim)
    # A writer that read the record before completion writes its stale "running" copy back.
    LocalDict(db_path).put(Keys.job(job_id), stale_view.to_record())
    with pytest.raises(NotOwner):
        store.record_progress(job_id, claim - 1, Progress(percent=50))
    with pytest.raises(IllegalTransition):
        store.record_progress(job_id, claim, Progress(percent=50))
    assert store.get(job_id).status is Status.COMPLETED


def test_a_superseded_owner_can_write_nothing(store: JobStore):
    job_id, old = job_in(store, Status.RUNNING)
    taken = store.claim(store.get(job_id), "sweeper")  # the sweeper takes over a stale attempt
    store.transition(job_id, Status.QUEUED, claim=taken)
    with pytest.raises(NotOwner):
        store.record_progress(job_id, old, Progress(percent=10))
    new = store.claim(store.get(job_id), "worker-b")
    store.transition(job_id, Status.RUNNING, claim=new)
    with pytest.raises(NotOwner):
        store.transition(job_id, Status.COMPLETED, claim=old)
    assert store.transition(job_id, Status.COMPLETED, claim=new).attempts == 2


def test_a_claim_number_nobody_won_is_refused(store: JobStore):
    job, _ = store.submit(request())
    with pytest.raises(NotOwner):
        store.transition(job.id, Status.RUNNING, claim=1)


def test_owner_writes_progress_and_heartbeats(store: JobStore):
    job_id, claim = job_in(store, Status.RUNNING)
    before = store.get(job_id).heartbeat_at
    store.record_progress(job_id, claim, Progress(percent=42.5, node_id="3", step=4, steps=10))
    job = store.get(job_id)
    assert job.progress.percent == 42.5 and job.progress.step == 4 and job.heartbeat_at >= before


def test_cancel_a_queued_job_cancels_it_at_once(store: JobStore):
    job, _ = store.submit(request())
    cancelled = store.request_cancel(job.id)
    assert cancelled.status is Status.CANCELLED and store.cancel_requested(job.id)
    assert store.claim(store.get(job.id), "late-worker") is None or store.get(job.id).terminal


def test_cancel_a_running_job_raises_the_flag_for_its_worker(store: JobStore):
    job_id, claim = job_in(store, Status.RUNNING)
    assert store.request_cancel(job_id).status is Status.RUNNING
    assert store.cancel_requested(job_id)
    assert store.transition(job_id, Status.CANCELLED, claim=claim).status is Status.CANCELLED


def test_cancel_of_a_finished_job_changes_nothing(store: JobStore):
    job_id, _ = job_in(store, Status.COMPLETED)
    assert store.request_cancel(job_id).status is Status.COMPLETED
    assert not store.cancel_requested(job_id)


def test_idempotency_key_returns_the_same_job(store: JobStore, db_path):
    first, created = store.submit(request(idempotency_key="order-1", user_id="u1"))
    again, created_again = store.submit(request(idempotency_key="order-1", user_id="u1"))
    other_user, _ = store.submit(request(idempotency_key="order-1", user_id="u2"))
    assert created and not created_again and again.id == first.id and other_user.id != first.id
    assert LocalQueue(db_path).len(total=True) == 2
    with pytest.raises(Conflict, match="different request"):
        store.submit(request(idempotency_key="order-1", user_id="u1", metadata={"changed": True}))


def test_racing_submits_with_one_idempotency_key_make_one_job(store: JobStore, db_path):
    barrier = threading.Barrier(16)

    def submit(_: int) -> str:
        barrier.wait()
        return store.submit(request(idempotency_key="same"))[0].id

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(submit, range(16)))
    assert len(ids) == 1 and LocalQueue(db_path).len(total=True) == 1


def test_a_full_queue_refuses_the_submit_and_stores_nothing(db_path, settings):
    store = JobStore(LocalDict(db_path), LocalQueue(db_path, capacity=1), settings)
    kept, _ = store.submit(request())
    with pytest.raises(QueueFull) as info:
        store.submit(request(idempotency_key="k"))
    assert info.value.retry_after_s > 0
    assert [j.id for j in store.list_jobs().jobs] == [kept.id]
    assert not LocalDict(db_path).contains(Keys.idempotency(None, "k"))


# --- listing ------------------------------------------------------------------------------------


def test_listing_is_newest_first_with_a_cursor(store: JobStore):
    ids = [store.submit(request())[0].id for _ in range(7)]
    first = store.list_jobs(limit=3)
    second = store.list_jobs(limit=3, cursor=first.next_cursor)
    third = store.list_jobs(limit=3, cursor=second.next_cursor)
    seen = [j.id for p in (first, second, third) for j in p.jobs]
    assert seen == ids[::-1] and third.next_cursor is None


def test_listing_by_user_and_status(store: JobStore):
    mine = [store.submit(request(user_id="alice"))[0].id for _ in range(3)]
    store.submit(request(user_id="bob"))
    store.request_cancel(mine[1])
    assert [j.id for j in store.list_jobs(user_id="alice").jobs] == mine[::-1]
    assert [j.id for j in store.list_jobs(user_id="alice", status=Status.CANCELLED).jobs] == [mine[1]]
    assert len(store.list_jobs(status=Status.QUEUED).jobs) == 3


def test_listing_rejects_bad_limits_and_cursors(store: JobStore):
    with pytest.raises(InvalidInput) as info:
        store.list_jobs(limit=0)
    assert info.value.field == "limit"
    with pytest.raises(InvalidInput) as info:
        store.list_jobs(cursor="../etc")
    assert info.value.field == "cursor"


class CountingDict(LocalDict):
    """The real twin, counting reads, to prove a page costs O(page) and not O(store)."""

    reads = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)

    def contains(self, key: Any) -> bool:
        self.reads += 1
        return super().contains(key)

    def _rows(self, columns: str) -> list:
        raise AssertionError("listing must not scan the whole Dict")


def _seed(d: LocalDict, n: int, settings) -> list[str]:
    """n stored jobs, written in bulk with the store's own key formats and records."""
    now, entries, ids = utcnow(), {}, []
    for i in range(1, n + 1):
        job = new_job(request(), f"job{i:06d}", "default", now + timedelta(microseconds=i))
        entries[Keys.job(job.id)] = job.to_record()
        entries[Keys.index_slot(Keys.ALL, i)] = job.id
        ids.append(job.id)
    entries[Keys.index_head(Keys.ALL)] = n - 3  # a lagging head hint, as racing writers leave it
    d.update(entries)
    return ids


def test_a_page_of_100k_jobs_reads_only_that_page(db_path, settings):
    d = CountingDict(db_path)
    ids = _seed(d, 100_000, settings)
    store = JobStore(d, LocalQueue(db_path), settings)
    d.reads = 0
    page = store.list_jobs(limit=20)
    assert [j.id for j in page.jobs] == ids[::-1][:20]
    assert d.reads <= 2 * 20 + 10
    d.reads = 0
    deeper = store.list_jobs(limit=20, cursor=page.next_cursor)
    assert [j.id for j in deeper.jobs] == ids[::-1][20:40] and d.reads == 2 * 20


def test_a_claim_orphaned_by_a_dead_worker_is_stepped_over(store: JobStore, db_path):
    job, _ = store.submit(request())
    long_ago = (utcnow() - timedelta(seconds=store.settings.heartbeat_stale_s + 5)).isoformat()
    LocalDict(db_path).put(Keys.claim(job.id, 1), {"owner": "dead-worker", "at": long_ago})
    n = store.claim(store.get(job.id), "worker-b")
    assert n == 2
    assert store.transition(job.id, Status.RUNNING, claim=n).claim_seq == 2


def test_a_fresh_claim_is_respected(store: JobStore):
    job, _ = store.submit(request())
    assert store.claim(job, "worker-a") == 1
    assert store.claim(job, "worker-b") is None
