"""Reliability: webhooks, the sweeper, cleanup, quotas and races — asserted on the resulting state."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, WORKFLOW, Receiver, submit, wait_until

from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import Settings
from comfy_saas.errors import InvalidInput, Overloaded
from comfy_saas.jobs import cleanup, deliveries, keys, sweeper, webhooks
from comfy_saas.jobs.model import Job, Status, utcnow
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services


def make_svc(db_path: Path, tmp_path: Path, **overrides: Any) -> Services:
    settings = Settings(data_dir=tmp_path, webhook_secret=SECRET, webhook_backoff_s=0.02,
                        private_url_allowlist="127.0.0.1/32", url_signing_secret="s", **overrides)
    objects = LocalStore(tmp_path / "out", "s", "http://127.0.0.1:9")
    return Services.over(LocalDict(db_path), LocalQueue(db_path), settings, objects)


@pytest.fixture
def svc(db_path: Path, tmp_path: Path) -> Services:
    return make_svc(db_path, tmp_path)


def running_job(svc: Services, **request: Any) -> Job:
    """A job submitted and started as a worker would; the running job as its worker holds it."""
    job = svc.lifecycle.start(submit(svc, **request), "w1")
    svc.store.settle(job.id)
    return job


def run_to(svc: Services, status: Status, **request: Any) -> str:
    """A job submitted, started and brought to `status` as a worker would."""
    return svc.lifecycle.finish(running_job(svc, **request), status).id


def dispatch_until(svc: Services, job_id: str, state: str) -> dict:
    """Run the sweeper (which lists pending deliveries) and the dispatcher until the delivery is in `state`."""
    def settled() -> dict | None:
        sweeper.sweep(svc)
        webhooks.dispatch(svc)
        delivery = svc.store.webhook(job_id)
        return delivery if delivery["state"] == state else None
    return wait_until(settled, 20, f"webhook {state}")


# --- webhooks -------------------------------------------------------------------------------------


def test_a_completed_job_is_announced_once_with_a_valid_signature(svc: Services, receiver: Receiver):
    job_id = run_to(svc, Status.COMPLETED, webhook_url=receiver.url)
    delivery = dispatch_until(svc, job_id, "delivered")
    for _ in range(3):
        webhooks.dispatch(svc)  # later dispatches send nothing more
    assert len(receiver.received) == 1 and receiver.bad_signatures == 0
    body = receiver.received[0]
    assert body["type"] == "job.completed" and body["data"]["id"] == job_id and body["data"]["status"] == "completed"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]


def test_500_twice_then_200_records_three_attempts_and_one_success(svc: Services, receiver: Receiver):
    receiver.script = [500, 500, 200]
    job_id = run_to(svc, Status.FAILED, webhook_url=receiver.url)
    delivery = dispatch_until(svc, job_id, "delivered")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert len(receiver.received) == 3 and receiver.bad_signatures == 0
    assert {r["type"] for r in receiver.received} == {"job.failed"}
    assert svc.store.get(job_id).status is Status.FAILED


def test_a_receiver_down_for_the_whole_window_never_fails_the_job(db_path: Path, tmp_path: Path):
    svc = make_svc(db_path, tmp_path, webhook_max_attempts=4)
    job_id = run_to(svc, Status.COMPLETED, webhook_url="http://127.0.0.1:9/down")
    delivery = dispatch_until(svc, job_id, "failed")
    assert len(delivery["attempts"]) == 4 and all(a["error"] for a in delivery["attempts"])
    job = svc.store.get(job_id)
    assert job.status is Status.COMPLETED


def test_retries_back_off_exponentially_over_minutes():
    delays = [deliveries.retry_delay_s(n, 30.0) for n in range(1, 9)]
    assert 24 <= delays[0] <= 36 and delays[-1] > 3000  # 30 s first, about an hour for the eighth
    assert all(b > a for a, b in itertools.pairwise(delays))


def test_two_dispatchers_never_send_one_attempt_twice(svc: Services, receiver: Receiver):
    job_ids = [run_to(svc, Status.COMPLETED, webhook_url=receiver.url) for _ in range(10)]
    barrier = threading.Barrier(4)

    sweeper.sweep(svc)  # lists the pending deliveries

    def race(i: int) -> None:
        barrier.wait()
        webhooks.dispatch(svc, owner=f"d{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(race, range(4)))
    for job_id in job_ids:
        dispatch_until(svc, job_id, "delivered")
    assert sorted(r["data"]["id"] for r in receiver.received) == sorted(job_ids)


def test_a_pending_delivery_survives_a_restart(svc: Services, receiver: Receiver, db_path: Path):
    job_id = run_to(svc, Status.CANCELLED, webhook_url=receiver.url)  # nobody sent it yet
    fresh = Services.over(LocalDict(db_path), LocalQueue(db_path), svc.settings, svc.objects)
    dispatch_until(fresh, job_id, "delivered")
    assert [r["type"] for r in receiver.received] == ["job.cancelled"]


def test_webhook_urls_into_our_network_are_refused_at_submit_and_at_send(db_path: Path, tmp_path: Path):
    strict = make_svc(db_path, tmp_path)
    strict = Services.over(LocalDict(db_path), LocalQueue(db_path), replace(strict.settings, private_url_allowlist=""),
                           strict.objects)
    for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/x"):
        with pytest.raises(InvalidInput) as info:
            submit_job(strict, Caller("k"), {"workflow": WORKFLOW, "webhook_url": url})
        assert info.value.field == "webhook_url"
    job_id = run_to(strict, Status.COMPLETED, webhook_url="http://127.0.0.1:9/hook")  # stored before a DNS change
    attempts = wait_until(lambda: (sweeper.sweep(strict), webhooks.dispatch(strict),
                                   strict.store.webhook(job_id)["attempts"])[2], 10, "the first attempt")
    assert "refused" in attempts[0]["error"]


# --- sweeper ----------------------------------------------------------------------------------------


def test_a_stale_heartbeat_is_requeued_then_failed_when_attempts_run_out(db_path: Path, tmp_path: Path):
    svc = make_svc(db_path, tmp_path, max_attempts=2)
    job_id = running_job(svc).id
    later = utcnow() + timedelta(seconds=svc.settings.heartbeat_stale_s + 1)
    assert sweeper.sweep(svc, later)["requeue"] == 1
    job = svc.store.get(job_id)
    assert job.status is Status.QUEUED and job.error.type == "worker_lost"
    svc.lifecycle.start(job, "w2")
    svc.store.settle(job_id)
    even_later = utcnow() + timedelta(seconds=svc.settings.heartbeat_stale_s + 1)
    assert sweeper.sweep(svc, even_later)["fail_worker_lost"] == 1
    assert svc.store.get(job_id).status is Status.FAILED and svc.store.get(job_id).attempts == 2


def test_run_and_queue_timeouts_fail_the_job_and_flag_the_worker(svc: Services):
    running_id = running_job(svc).id
    queued = submit(svc, pool="nobody")
    later = utcnow() + timedelta(seconds=max(svc.settings.job_timeout_s, svc.settings.queue_timeout_s) + 1)
    done = sweeper.sweep(svc, later)
    assert done["fail_run_timeout"] == 1 and done["fail_queue_timeout"] == 1
    assert svc.store.get(running_id).error.type == "timeout" and svc.store.cancel_requested(running_id)
    assert svc.store.get(queued.id).error.type == "queue_timeout"


def test_a_lost_wake_up_is_enqueued_again(svc: Services, db_path: Path):
    job = submit(svc)
    LocalQueue(db_path).clear(all=True)  # the queue lost the item
    assert sweeper.sweep(svc, utcnow() + timedelta(minutes=2))["reenqueue"] == 1
    assert svc.store.next_job_id("default", 1) == job.id


def test_a_sweep_out_of_time_leaves_the_rest_first_in_line_for_the_next(svc: Services, monkeypatch):
    waiting = [submit(svc) for _ in range(4)]  # watched for ever: queued with their wake-ups in the queue
    silent = [running_job(svc).id for _ in range(2)]  # last in the list, and due
    ticks = itertools.count()
    monkeypatch.setattr(sweeper, "time", type("Clock", (), {"monotonic": staticmethod(lambda: next(ticks))}))
    monkeypatch.setattr(sweeper, "BATCH", 2)
    later = utcnow() + timedelta(seconds=svc.settings.heartbeat_stale_s + 1)
    runs = [sweeper.sweep(svc, later, budget_s=1.5) for _ in range(3)]  # each run has time for one batch
    assert [(r["examined"], r["deferred"]) for r in runs] == [(2, 4)] * 3
    assert sum(r["requeue"] for r in runs) == 2
    assert all(svc.store.get(i).status is Status.QUEUED and svc.store.get(i).attempts == 1 for i in silent)
    assert all(svc.store.get(j.id).status is Status.QUEUED for j in waiting)


def test_two_sweepers_and_one_stale_job_make_one_outcome(svc: Services):
    job_id = running_job(svc).id
    later = utcnow() + timedelta(seconds=svc.settings.heartbeat_stale_s + 1)
    barrier = threading.Barrier(2)

    def sweep(i: int) -> int:
        barrier.wait()
        return sweeper.sweep(svc, later, owner=f"s{i}")["requeue"]

    with ThreadPoolExecutor(2) as pool:
        assert sum(pool.map(sweep, range(2))) == 1
    assert svc.store.get(job_id).status is Status.QUEUED


def _race_completion(svc: Services, rival: str) -> tuple[list[Status], Status]:
    """Completion and a rival decision at the same instant; (winning outcomes, final status)."""
    running = running_job(svc)
    job_id = running.id
    barrier = threading.Barrier(2)
    later = utcnow() + timedelta(seconds=svc.settings.job_timeout_s + 1)

    def complete() -> Status | None:
        barrier.wait()
        moved = svc.lifecycle.finish(running, Status.COMPLETED)
        return None if moved is None else moved.status

    def interfere() -> Status | None:
        barrier.wait()
        if rival == "cancel":
            svc.lifecycle.cancel(job_id)
            moved = svc.lifecycle.finish(running, Status.CANCELLED)  # the worker saw the flag
            return None if moved is None else moved.status
        job = svc.store.get(job_id)
        action = sweeper.decide(job, later, svc.settings, False)  # None if it already saw completion
        return Status.FAILED if action and sweeper.act(svc, job, action) else None

    with ThreadPoolExecutor(2) as pool:
        outcomes = [f.result() for f in [pool.submit(complete), pool.submit(interfere)]]
    return [o for o in outcomes if o is not None], svc.store.get(job_id).status


@pytest.mark.parametrize("rival", ["cancel", "timeout"])
def test_cancel_or_timeout_racing_completion_leaves_one_terminal_state(svc: Services, rival: str):
    for _ in range(20):
        winners, final = _race_completion(svc, rival)
        assert len(winners) == 1 and final is winners[0]


# --- quotas and idempotency -------------------------------------------------------------------------


def test_active_jobs_are_capped_per_user_and_globally(db_path: Path, tmp_path: Path):
    svc = make_svc(db_path, tmp_path, max_active_jobs=5, max_active_jobs_per_user=2)
    alice = [submit(svc, user_id="alice") for _ in range(2)]
    with pytest.raises(Overloaded) as info:
        submit(svc, user_id="alice")
    assert info.value.retry_after_s > 0 and "this user" in info.value.message
    for user in ("bob", "bob", "carol"):
        submit(svc, user_id=user)
    with pytest.raises(Overloaded, match="the service"):
        submit(svc, user_id="dave")
    svc.lifecycle.cancel(alice[0].id)  # a finished job gives its slot back
    assert submit(svc, user_id="alice").status is Status.QUEUED


def test_fifty_concurrent_submits_with_one_key_make_one_job(svc: Services, db_path: Path):
    barrier = threading.Barrier(50)

    def submit_one(_: int) -> str:
        barrier.wait()
        return submit_job(svc, Caller("k", "alice"), {"workflow": WORKFLOW, "idempotency_key": "order-7"})[0]["id"]

    with ThreadPoolExecutor(50) as pool:
        ids = set(pool.map(submit_one, range(50)))
    assert len(ids) == 1 and LocalQueue(db_path).len(total=True) == 1
    assert len(svc.store.list_jobs(user_id="alice").jobs) == 1


# --- cleanup --------------------------------------------------------------------------------------


def test_cleanup_deletes_expired_jobs_and_everything_kept_for_them(svc: Services, db_path: Path):
    old = run_to(svc, Status.COMPLETED, idempotency_key="old-key", webhook_url="http://127.0.0.1:9/x",
                 user_id="alice")
    created = svc.store.get(old).created_at
    svc.objects.put_bytes(keys.output(old, created, "2", "a_0.png"), b"png")
    young_running = running_job(svc).id
    # Files go by whole days: a job's day folder goes once the whole day is past retention.
    later = utcnow() + timedelta(days=svc.settings.retention_days + 1, hours=1)
    done = cleanup.cleanup(svc, later)
    assert done["jobs"] == 1 and done["outputs"] == 1
    assert svc.store.get(old) is None and not svc.objects.path(keys.object_prefix(old, created).rstrip("/")).exists()
    leftovers = [k for k, v in LocalDict(db_path).items() if old in str(k) or old in str(v)]
    assert leftovers == []  # its listing slots too, in every scope
    assert svc.store.get(young_running) is not None  # not finished: kept, and cleanup stops there
    assert cleanup.cleanup(svc, later) == {}  # idempotent
    svc.store.index.head(keys.ALL)  # the index still answers
    assert svc.store.list_jobs(user_id="alice").jobs == [] and svc.store.list_jobs().jobs[0].id == young_running


def test_deployed_without_a_webhook_secret_deliveries_fail_visibly(db_path: Path, tmp_path: Path,
                                                                   receiver: Receiver):
    svc = make_svc(db_path, tmp_path, webhook_max_attempts=1)
    svc.settings = replace(svc.settings, webhook_secret="", storage_backend="s3")
    job_id = run_to(svc, Status.COMPLETED, webhook_url=receiver.url)
    delivery = dispatch_until(svc, job_id, "failed")
    assert "COMFY_WEBHOOK_SECRET" in delivery["attempts"][0]["error"] and receiver.received == []


def test_progress_events_are_sent_when_asked_then_one_terminal_event(svc: Services, receiver: Receiver, tmp_path):
    from conftest import start_double

    from comfy_saas.runner.worker import Worker

    double = start_double(tmp_path / "comfy")
    try:
        slow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}},
                "2": {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": 10, "delay": 0.15,
                                                                  "send_preview": False, "send_text": False,
                                                                  "seed": 0}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "wp"}}}
        job = submit(svc, workflow=slow, webhook_url=receiver.url, webhook_progress=True)
        worker = Worker(svc, double.client)
        worker.process(svc.store.next_job_id("default", 5))
        worker.events.close()
        dispatch_until(svc, job.id, "delivered")
    finally:
        double.stop()
    kinds = [r["type"] for r in receiver.received]
    assert kinds.count("job.completed") == 1 and kinds.count("job.progress") >= 1
    assert receiver.bad_signatures == 0
