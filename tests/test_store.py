"""The job store and the lifecycle's moves: transitions, claims, exactly-once outcomes, idempotency,
cancel and listing. Every test asserts on what ends up stored."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from conftest import WORKFLOW, submit

from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.errors import Conflict, IllegalTransition, InvalidInput, QueueFull
from comfy_saas.jobs import keys
from comfy_saas.jobs.lifecycle import AttemptMoved
from comfy_saas.jobs.model import TRANSITIONS, Job, JobError, Output, Progress, Status, utcnow
from comfy_saas.jobs.request import JobRequest, new_job
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import Decided, JobStore


def job_in(svc: Services, status: Status) -> Job:
    """A job brought to `status` the way the system would, as its last mover holds it."""
    job = submit(svc)
    if status is Status.QUEUED:
        return job
    job = svc.lifecycle.start(job, "worker-a")
    svc.store.settle(job.id)
    if status is not Status.RUNNING:
        job = svc.lifecycle.finish(job, status)
    return job


def test_submit_stores_a_small_record_the_workflow_apart_and_enqueues(svc: Services, db_path):
    job = submit(svc, pool="gpu-a", metadata={"order": 7})
    assert job.status is Status.QUEUED
    d = LocalDict(db_path)
    assert "workflow" not in d[keys.job(job.id)]
    assert svc.store.payload(job.id)["workflow"] == WORKFLOW
    assert svc.store.get(job.id).metadata == {"order": 7}
    assert svc.store.next_wakeup("gpu-a", 0.1).job == job  # the wake-up carries the job as queued


LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in targets]
ILLEGAL = [(a, b) for a in Status for b in Status if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("start", "target"), LEGAL)
def test_every_legal_transition_works(svc: Services, start: Status, target: Status):
    job = job_in(svc, start)
    moved = svc.store.transition(job, target, "worker-b")
    assert moved.status is target and svc.store.get(job.id).status is target


@pytest.mark.parametrize(("start", "target"), ILLEGAL)
def test_every_illegal_transition_raises(svc: Services, start: Status, target: Status):
    job = job_in(svc, start)
    with pytest.raises(IllegalTransition):
        svc.store.transition(job, target, "worker-b")
    assert svc.store.get(job.id).status is start


def test_status_stamps_follow_the_rules(svc: Services):
    job = job_in(svc, Status.RUNNING)
    running = svc.store.get(job.id)
    assert running.attempts == 1 and running.started_at and running.heartbeat_at
    out = Output(node_id="2", kind="image", filename="a.png", key="k/a.png", content_type="image/png", size_bytes=3)
    done = svc.lifecycle.finish(job, Status.COMPLETED, outputs=[out])
    assert done.finished_at and svc.store.get(job.id).outputs[0].key == "k/a.png"


def test_two_starters_of_one_attempt_get_one_winner(svc: Services):
    job = submit(svc)
    barrier = threading.Barrier(8)

    def start(i: int) -> Job | None:
        barrier.wait()
        return svc.lifecycle.start(job, f"worker-{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    svc.store.settle(job.id)
    assert svc.store.get(job.id).worker_id == winners[0].worker_id


def test_terminal_outcome_is_decided_exactly_once(svc: Services):
    job = job_in(svc, Status.RUNNING)
    barrier = threading.Barrier(6)
    targets = [Status.COMPLETED, Status.FAILED, Status.CANCELLED] * 2

    def finish(target: Status) -> Status | None:
        barrier.wait()
        moved = svc.lifecycle.finish(job, target)
        return None if moved is None else moved.status

    with ThreadPoolExecutor(6) as pool:
        winners = [s for s in pool.map(finish, targets) if s is not None]
    assert len(winners) == 1
    assert svc.store.get(job.id).status is winners[0]


def test_a_late_move_from_a_stale_view_cannot_undo_an_outcome(svc: Services):
    job = job_in(svc, Status.RUNNING)
    stale_view = svc.store.get(job.id)
    svc.lifecycle.finish(job, Status.COMPLETED)
    # An actor that read the record before completion tries to requeue from its stale copy.
    assert svc.lifecycle.take_over(stale_view, Status.QUEUED, JobError(type="x", message="y"), "sweeper") is None
    assert svc.store.get(job.id).status is Status.COMPLETED
    with pytest.raises(AttemptMoved):
        svc.lifecycle.heartbeat(job, Progress(percent=50))
    assert svc.store.get(job.id).status is Status.COMPLETED


def test_a_superseded_owner_can_decide_nothing(svc: Services):
    old = job_in(svc, Status.RUNNING)
    requeued = svc.lifecycle.take_over(old, Status.QUEUED, JobError(type="worker_lost", message="-"), "sweeper")
    assert requeued.status is Status.QUEUED
    with pytest.raises(AttemptMoved):
        svc.lifecycle.heartbeat(old, Progress(percent=10))
    assert svc.lifecycle.release(old, JobError(type="comfyui_unavailable", message="-")) is None
    assert svc.lifecycle.finish(old, Status.COMPLETED) is None  # the zombie's outcome is refused
    running = svc.lifecycle.start(requeued, "worker-b")
    with pytest.raises(Decided):
        svc.store.transition(old, Status.COMPLETED, "worker-a")
    assert svc.lifecycle.finish(running, Status.COMPLETED).attempts == 2


def test_owner_writes_progress_and_heartbeats_without_touching_the_record(svc: Services, db_path):
    job = job_in(svc, Status.RUNNING)
    record_before = LocalDict(db_path)[keys.job(job.id)]
    before = svc.store.get(job.id).heartbeat_at
    events = [{"seq": 1, "at": utcnow().isoformat(), "progress": {"percent": 42.5}}]
    svc.lifecycle.heartbeat(job, Progress(percent=42.5, node_id="3", step=4, steps=10), events)
    seen = svc.store.get(job.id)
    assert seen.progress.percent == 42.5 and seen.progress.step == 4 and seen.heartbeat_at >= before
    assert LocalDict(db_path)[keys.job(job.id)] == record_before
    assert [e["seq"] for e in svc.store.progress_events(job.id)] == [1]


def test_cancel_a_queued_job_cancels_it_at_once(svc: Services):
    job = submit(svc)
    cancelled = svc.lifecycle.cancel(job.id)
    assert cancelled.status is Status.CANCELLED and svc.store.cancel_requested(job.id)
    assert svc.lifecycle.start(job, "late-worker") is None and svc.store.get(job.id).terminal


def test_cancel_a_running_job_raises_the_flag_for_its_worker(svc: Services):
    job = job_in(svc, Status.RUNNING)
    assert svc.lifecycle.cancel(job.id).status is Status.RUNNING
    assert svc.store.cancel_requested(job.id)
    assert svc.lifecycle.finish(job, Status.CANCELLED).status is Status.CANCELLED


def test_cancel_of_a_finished_job_changes_nothing(svc: Services):
    job = job_in(svc, Status.COMPLETED)
    assert svc.lifecycle.cancel(job.id).status is Status.COMPLETED
    assert not svc.store.cancel_requested(job.id)


def test_idempotency_key_returns_the_same_job(svc: Services, db_path):
    def create(**fields: Any) -> tuple[Job, bool]:
        request = JobRequest(workflow=WORKFLOW, **fields)
        return svc.lifecycle.create(request, {"workflow": WORKFLOW})

    first, created = create(idempotency_key="order-1", user_id="u1")
    again, created_again = create(idempotency_key="order-1", user_id="u1")
    other_user, _ = create(idempotency_key="order-1", user_id="u2")
    assert created and not created_again and again.id == first.id and other_user.id != first.id
    assert LocalQueue(db_path).len(total=True) == 2
    with pytest.raises(Conflict, match="different request"):
        create(idempotency_key="order-1", user_id="u1", metadata={"changed": True})


def test_racing_submits_with_one_idempotency_key_make_one_job(svc: Services, db_path):
    barrier = threading.Barrier(16)

    def create(_: int) -> str:
        barrier.wait()
        return submit(svc, idempotency_key="same").id

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(create, range(16)))
    assert len(ids) == 1 and LocalQueue(db_path).len(total=True) == 1


def test_a_full_queue_refuses_the_submit_and_stores_nothing(db_path, settings):
    svc = Services.over(LocalDict(db_path), LocalQueue(db_path, capacity=1), settings)
    kept = submit(svc)
    with pytest.raises(QueueFull) as info:
        submit(svc, idempotency_key="k")
    assert info.value.retry_after_s > 0
    assert [j.id for j in svc.store.list_jobs().jobs] == [kept.id]
    assert not LocalDict(db_path).contains(keys.idempotency(None, "k"))


# --- listing ------------------------------------------------------------------------------------


def test_listing_is_newest_first_with_a_cursor(svc: Services):
    ids = [submit(svc).id for _ in range(7)]
    first = svc.store.list_jobs(limit=3)
    second = svc.store.list_jobs(limit=3, cursor=first.next_cursor)
    third = svc.store.list_jobs(limit=3, cursor=second.next_cursor)
    seen = [j.id for p in (first, second, third) for j in p.jobs]
    assert seen == ids[::-1] and third.next_cursor is None


def test_listing_by_user_and_status(svc: Services):
    mine = [submit(svc, user_id="alice").id for _ in range(3)]
    submit(svc, user_id="bob")
    svc.lifecycle.cancel(mine[1])
    assert [j.id for j in svc.store.list_jobs(user_id="alice").jobs] == mine[::-1]
    assert [j.id for j in svc.store.list_jobs(user_id="alice", status=Status.CANCELLED).jobs] == [mine[1]]
    assert len(svc.store.list_jobs(status=Status.QUEUED).jobs) == 3


def test_listing_rejects_bad_limits_and_cursors(store: JobStore):
    with pytest.raises(InvalidInput) as info:
        store.list_jobs(limit=0)
    assert info.value.field == "limit"
    for cursor in ("../etc", "²", "9" * 5000):
        with pytest.raises(InvalidInput) as info:
            store.list_jobs(cursor=cursor)
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


def _seed(d: LocalDict, n: int) -> list[str]:
    """n stored jobs, written in bulk with the store's own key formats and records."""
    now, entries, ids = utcnow(), {}, []
    for i in range(1, n + 1):
        job = new_job(JobRequest(workflow=WORKFLOW), f"job{i:06d}", "default", now + timedelta(microseconds=i))
        entries[keys.job(job.id)] = job.to_record()
        entries[keys.index_slot(keys.ALL, i)] = job.id
        ids.append(job.id)
    entries[keys.index_head(keys.ALL)] = n - 3  # a lagging head hint, as racing writers leave it
    d.update(entries)
    return ids


def test_a_page_of_100k_jobs_reads_only_that_page(db_path, settings):
    d = CountingDict(db_path)
    ids = _seed(d, 100_000)
    store = JobStore(d, LocalQueue(db_path), settings)
    d.reads = 0
    page = store.list_jobs(limit=20)
    assert [j.id for j in page.jobs] == ids[::-1][:20]
    assert d.reads <= 3 * 20 + 20  # a slot, a record and a progress key per job, plus the head
    d.reads = 0
    deeper = store.list_jobs(limit=20, cursor=page.next_cursor)
    assert [j.id for j in deeper.jobs] == ids[::-1][20:40] and d.reads == 3 * 20


def test_a_move_whose_winner_died_before_writing_it_is_finished_by_the_next_actor(svc: Services, db_path):
    job = submit(svc)
    # A worker won the start, then died before writing the running record.
    d = LocalDict(db_path)
    running = job.model_copy(update={"status": Status.RUNNING, "claim_seq": 1, "attempts": 1,
                                     "started_at": utcnow(), "worker_id": "dead"})
    long_ago = (utcnow() - timedelta(seconds=30)).isoformat()
    d.put(keys.claim(job.id, 1), {"owner": "dead", "at": long_ago, "outcome": running.to_record()})
    assert svc.lifecycle.start(job, "worker-b") is None  # the duplicate wake-up loses, and repairs
    assert svc.store.get(job.id).status is Status.RUNNING and svc.store.get(job.id).worker_id == "dead"


def test_a_fresh_decision_is_respected_and_left_to_its_winner(svc: Services):
    job = submit(svc)
    assert svc.lifecycle.start(job, "worker-a") is not None
    assert svc.lifecycle.start(job, "worker-b") is None
    svc.store.settle(job.id)
    assert svc.store.get(job.id).worker_id == "worker-a"


def test_the_newest_page_is_found_when_writers_raced_far_past_the_head_hint(db_path, settings):
    d = LocalDict(db_path)
    ids = _seed(d, 100)
    d.put(keys.index_head(keys.ALL), 40)  # 60 slots claimed since the hint was last moved
    d.pop(keys.index_slot(keys.ALL, 95))  # and a hole a cleanup left among them
    store = JobStore(d, LocalQueue(db_path), settings)
    page = store.list_jobs(limit=20)
    newest = [i for i in ids[::-1] if i != ids[94]]
    assert [j.id for j in page.jobs] == newest[:19] and store.index.head(keys.ALL) == 100  # the hole takes a place
    assert store.list_jobs(limit=20, cursor=page.next_cursor).jobs[0].id == newest[19]


def test_a_process_that_saw_the_head_finds_the_newest_after_others_wrote_far_past_it_or_the_scope_restarted(
        db_path, settings):
    """The head this process saw last is only a guess read alongside the hint: never trusted over the slots."""
    d = LocalDict(db_path)
    _seed(d, 100)
    store = JobStore(d, LocalQueue(db_path), settings)
    assert store.list_jobs(limit=20).jobs[0].id == "job000100"
    ids = _seed(d, 200)  # other processes wrote 100 more, far past where this one looks first
    assert [j.id for j in store.list_jobs(limit=20).jobs] == ids[::-1][:20]
    for n in range(1, 201):  # a quiet week on Modal: every slot and the hint expired; the scope starts again
        d.pop(keys.index_slot(keys.ALL, n))
    d.pop(keys.index_head(keys.ALL))
    fresh = _seed(d, 5)
    assert [j.id for j in store.list_jobs(limit=20).jobs] == fresh[::-1]
    assert store.index.head(keys.ALL) == 5
