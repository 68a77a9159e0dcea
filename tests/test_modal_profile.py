"""The store under Modal's rules, on the twins' Modal profile with an injected clock: entries that expire,
size limits, store outages. Asserted on what is left in the Dict and in object storage."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKFLOW, wait_until

from comfy_saas.backends.objects import LocalStore, ObjectStore, S3Store
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile
from comfy_saas.config import Limits, Settings
from comfy_saas.errors import BackendError, BodyTooLarge, NotFound
from comfy_saas.jobs import cleanup, sweeper
from comfy_saas.jobs.model import Status, utcnow
from comfy_saas.jobs.operations import Caller, submit_job
from comfy_saas.jobs.services import Services
from comfy_saas.runner.worker import Worker


class Clock:
    """One clock for the twins (epoch seconds) and the store (datetimes)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()


def modal_services(db: Path, settings: Settings, objects: ObjectStore, clock: Clock, **limits: Any) -> Services:
    profile = Profile.modal(rpc_ms=0, clock=clock.epoch, **limits)
    return Services.over(LocalDict(db, "jobs", profile), LocalQueue(db, "work", profile=profile), settings, objects,
                         clock=clock)


def stored_keys(d: LocalDict) -> list[Any]:
    """Every key in the Dict (a scan: tests only)."""
    return list(d.keys())


def _local_objects(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", "s", "http://127.0.0.1:9")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_finished_job_nobody_reads_is_gone_eight_days_later(backend: str, request: pytest.FixtureRequest,
                                                               db_path: Path, tmp_path: Path, double):
    objects = request.getfixturevalue("s3") if backend == "s3" else _local_objects(tmp_path)
    clock = Clock()
    svc = modal_services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s"), objects, clock)
    media = [{"name": "in.png", "base64": base64.b64encode(b"\x89PNG" + b"0" * 100).decode()}]
    view, _ = submit_job(svc, Caller("k"), {"workflow": WORKFLOW | {"2": {"class_type": "SaveImage", "inputs": {
        "images": ["1", 0], "filename_prefix": "gone"}}, "1": {"class_type": "EmptyImage", "inputs": {
            "width": 8, "height": 8, "batch_size": 1, "color": 1}}}, "media": media})
    worker = Worker(svc, double.client)
    worker.process(svc.store.next_wakeup("default", 5))
    worker.events.close()
    svc.store.settle()
    job = svc.store.get(view["id"])
    assert job.status is Status.COMPLETED and _objects_of(objects, job.id)  # outputs and the media input

    clock.now += timedelta(days=8)  # nobody read it since; the daily cleanup runs
    cleanup.cleanup(svc)
    assert _objects_of(objects, job.id) == []
    assert [k for k in stored_keys(LocalDict(db_path, "jobs", Profile.modal(0, clock.epoch))) if job.id in str(k)] == []


def _objects_of(objects: ObjectStore, job_id: str) -> list[str]:
    if isinstance(objects, S3Store):
        listing = objects._client.list_objects_v2(Bucket=objects.bucket, Prefix="jobs/")
        return [o["Key"] for o in listing.get("Contents", []) if f"/{job_id}/" in o["Key"]]
    return [str(p) for p in objects.root.rglob("*") if p.is_file() and job_id in str(p)]


def test_an_oversized_payload_is_a_413_and_gives_back_its_key_and_quota(db_path: Path, tmp_path: Path):
    clock = Clock()
    settings = Settings(data_dir=tmp_path, url_signing_secret="s", max_active_jobs=1)
    svc = modal_services(db_path, settings, _local_objects(tmp_path), clock, max_value_bytes=20_000)
    big = {str(i): {"class_type": "EmptyImage", "inputs": {"note": "x" * 100}} for i in range(200)}  # ~25 KB
    with pytest.raises(BodyTooLarge):
        submit_job(svc, Caller("k"), {"workflow": big, "idempotency_key": "order-1"})
    assert [k for k in stored_keys(svc.store.d._target) if str(k).startswith(("job:", "payload:"))] == []
    view, created = submit_job(svc, Caller("k"), {"workflow": WORKFLOW, "idempotency_key": "order-1"})
    assert created and view["status"] == "queued"  # the key and the only quota slot were given back


def test_a_job_with_the_largest_media_keeps_under_64_kb_in_the_dict(db_path: Path, tmp_path: Path):
    limits = Limits()
    objects = _local_objects(tmp_path)
    svc = modal_services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s"), objects, Clock())
    each = limits.max_media_total_bytes // limits.max_media_items
    media = [{"name": f"m{i}.png", "base64": base64.b64encode(bytes([i]) * each).decode()}
             for i in range(limits.max_media_items)]
    workflow = {str(i): {"class_type": "EmptyImage", "inputs": {"pad": "p" * 900}} for i in range(1000)}  # ~1 MB
    view, _ = submit_job(svc, Caller("k"), {"workflow": workflow, "media": media})
    in_dict = sum(len(json.dumps(v)) for k, v in svc.store.d._target.items() if view["id"] in json.dumps([k, v]))
    assert in_dict < 64 * 1024
    assert sum(p.stat().st_size for p in objects.root.rglob("*") if p.is_file()) >= limits.max_media_total_bytes


class Outage(Exception):
    """The store stopped answering."""


class FailingAfter:
    """A twin that fails every call from the n-th on, until healed."""

    def __init__(self, target: Any, calls: list[int], fail_from: int) -> None:
        self._target, self._calls, self._fail_from = target, calls, fail_from
        self.healed = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[0] += 1
            if not self.healed and self._calls[0] >= self._fail_from:
                raise Outage(f"call {self._calls[0]} ({name})")
            return attr(*args, **kwargs)
        return call


def _submit_calls(tmp_path: Path) -> int:
    """How many store calls one submission makes (the outage test covers each of them)."""
    calls = [0]
    d, q = LocalDict(tmp_path / "count.sqlite3"), LocalQueue(tmp_path / "count.sqlite3")
    svc = Services.over(FailingAfter(d, calls, 10**9), FailingAfter(q, calls, 10**9),
                        Settings(data_dir=tmp_path, max_active_jobs=5), _local_objects(tmp_path))
    submit_job(svc, Caller("k", "alice"), {"workflow": WORKFLOW, "idempotency_key": "x"})
    return calls[0]


def test_a_store_outage_at_any_step_of_submit_answers_503_and_leaves_nothing_half_made(tmp_path: Path, monkeypatch):
    """Whatever call the outage begins at (and the give-back cannot reach the store either), what is left
    is nothing, or a whole job the sweeper finishes: never a record without its payload or a wake-up that
    starts a job with no record."""
    monkeypatch.setattr("comfy_saas.backends.guarded.RETRY_DELAYS_S", (0.0,))
    total = _submit_calls(tmp_path)
    assert total >= 5
    for step in range(1, total + 1):
        calls, db = [0], tmp_path / f"outage-{step}.sqlite3"
        d, q = FailingAfter(LocalDict(db), calls, step), FailingAfter(LocalQueue(db), calls, step)
        svc = Services.over(d, q, Settings(data_dir=tmp_path, max_active_jobs=5), _local_objects(tmp_path))
        with pytest.raises(BackendError):
            submit_job(svc, Caller("k", "alice"), {"workflow": WORKFLOW, "idempotency_key": "x"})
        d.healed = q.healed = True
        _take_wakeups(svc)
        records = [k.split(":")[1] for k in stored_keys(LocalDict(db)) if str(k).startswith("job:")]
        assert len(records) <= 1, step
        for job_id in records:  # a whole job: it has its payload, and the sweeper sees it through to a worker
            assert svc.store.payload(job_id), step
            job = svc.store.get(job_id)
            if job.status is Status.QUEUED:
                sweeper.sweep(svc, now=utcnow() + timedelta(minutes=2))
                assert svc.store.next_wakeup("default", 1).job_id == job_id, step


def _take_wakeups(svc: Services) -> None:
    class NoComfy:
        def healthy(self) -> bool:
            return True

        def forget_health(self) -> None:
            pass

        def events(self, client_id: str) -> Any:
            return None

    worker = Worker.__new__(Worker)
    class QuietSocket:
        def drop_waiting(self) -> bool:
            return False  # so the health check decides

        def alive(self) -> bool:
            return False

    worker.store, worker.lifecycle, worker.comfy, worker.worker_id = svc.store, svc.lifecycle, NoComfy(), "w"
    worker.events = QuietSocket()
    worker.settings = svc.settings
    worker._starter = ThreadPoolExecutor(1)
    # no prompt goes anywhere: only whether the job would start
    worker.submit_early = lambda job, payload, taken_at=None: None
    while (wakeup := svc.store.next_wakeup("default", 0.01)) is not None:
        worker.run_job = lambda job, payload, early=None, taken_at=None: None  # nothing to run here
        worker.process(wakeup)
    svc.store.settle()


def test_after_an_outage_the_same_idempotency_key_works_again(db_path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("comfy_saas.backends.guarded.RETRY_DELAYS_S", (0.0,))
    clock, calls = Clock(), [0]
    profile = Profile.modal(rpc_ms=0, clock=clock.epoch)
    d = FailingAfter(LocalDict(db_path, "jobs", profile), calls, 2)  # the key is claimed, then the store goes
    svc = Services.over(d, LocalQueue(db_path, profile=profile), Settings(data_dir=tmp_path),
                        _local_objects(tmp_path), clock=clock)
    with pytest.raises(BackendError):
        submit_job(svc, Caller("k"), {"workflow": WORKFLOW, "idempotency_key": "order-9"})
    d.healed = True
    clock.now += timedelta(minutes=1)  # the abandoned claim on the key is taken over
    view, created = submit_job(svc, Caller("k"), {"workflow": WORKFLOW, "idempotency_key": "order-9"})
    assert created and wait_until(lambda: svc.store.get(view["id"]), 5, "the job")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_templates_and_the_node_catalogue_outlive_a_quiet_week(backend: str, request: pytest.FixtureRequest,
                                                               db_path: Path, tmp_path: Path, double):
    """Dict entries nobody touches for 7 days are gone; a template saved months ago and the catalogue its
    inputs are typed by must not be, nor may the first request after a quiet week wait for a GPU to boot."""
    from comfy_saas.jobs import catalogues, keys, templates
    from comfy_saas.workflows import preflight

    objects = request.getfixturevalue("s3") if backend == "s3" else _local_objects(tmp_path)
    clock, settings = Clock(), Settings(data_dir=tmp_path, url_signing_secret="s")
    svc = modal_services(db_path, settings, objects, clock)
    catalogues.publish(svc, preflight.compact(double.client.object_info()), "default")
    alice = Caller("k", "alice")
    body = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                      "color": 0}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}},
            "inputs": {"color": {"node": "1", "input": "color"}}}
    _, created = templates.put_template(svc, alice, "swatch", body)
    assert created

    clock.now += timedelta(days=8)
    later = modal_services(db_path, settings, objects, clock)  # a new container: nothing cached in memory
    assert later.store.d.get(keys.object_info("default")) is None  # the Dict's copy expired
    assert [t["name"] for t in templates.list_templates(later, alice)["templates"]] == ["swatch"]
    assert "color" in templates.get_template(later, alice, "swatch")["schema"]["properties"]
    view, created = templates.submit_from_template(later, alice, "swatch", {"inputs": {"color": 7}})
    assert created and view["status"] == "queued" and view["template"] == "swatch"
    assert later.store.d.get(keys.object_info("default")) is not None  # put back for the next readers

    assert templates.delete_template(later, alice, "swatch")["deleted"]
    assert templates.list_templates(later, alice)["templates"] == []
    with pytest.raises(NotFound):
        templates.get_template(later, alice, "swatch")


def test_an_owner_holds_at_most_max_templates_and_replacing_one_is_not_another(db_path: Path, tmp_path: Path,
                                                                              double):
    from comfy_saas.errors import Conflict
    from comfy_saas.jobs import catalogues, templates
    from comfy_saas.workflows import preflight

    settings = Settings(data_dir=tmp_path, url_signing_secret="s", max_templates=2)
    svc = modal_services(db_path, settings, _local_objects(tmp_path), Clock())
    catalogues.publish(svc, preflight.compact(double.client.object_info()), "default")
    alice, bob = Caller("k", "alice"), Caller("k", "bob")
    body = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                      "color": 0}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}}
    assert [templates.put_template(svc, alice, n, body)[1] for n in ("a", "a.b")] == [True, True]
    with pytest.raises(Conflict, match="COMFY_MAX_TEMPLATES"):
        templates.put_template(svc, alice, "c", body)
    assert templates.put_template(svc, alice, "a", body)[1] is False  # a replacement
    assert templates.put_template(svc, bob, "c", body)[1] is True  # each owner has their own allowance
    templates.delete_template(svc, alice, "a")
    assert templates.put_template(svc, alice, "c", body)[1] is True
    assert [t["name"] for t in templates.list_templates(svc, alice)["templates"]] == ["a.b", "c"]


class Unreachable:
    """Object storage that does not answer (every call a BackendError, as S3Store raises them)."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise BackendError(f"object storage unreachable ({name})")
        return call


def test_object_storage_down_is_a_503_for_templates_and_no_obstacle_to_api_submits(db_path: Path, tmp_path: Path):
    from comfy_saas.errors import CatalogueUnavailable
    from comfy_saas.jobs import templates

    svc = modal_services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s"), Unreachable(), Clock())
    svc.wake = lambda *a, **k: None
    view, created = submit_job(svc, Caller("k"), {"workflow": WORKFLOW})  # no catalogue anywhere: checked at run
    assert created and view["status"] == "queued"
    with pytest.raises(CatalogueUnavailable):
        templates.put_template(svc, Caller("k", "alice"), "t", {"workflow": WORKFLOW})
    for call in (lambda: templates.list_templates(svc, Caller("k", "alice")),
                 lambda: templates.delete_template(svc, Caller("k", "alice"), "t")):
        with pytest.raises(BackendError):
            call()


def test_a_template_job_naming_a_pool_that_is_not_served_is_a_422(db_path: Path, tmp_path: Path, double):
    """The pool names the catalogue looked up (and its object's key) before the job is routed."""
    from comfy_saas.errors import InvalidInput
    from comfy_saas.jobs import catalogues, templates
    from comfy_saas.workflows import preflight

    svc = modal_services(db_path, Settings(data_dir=tmp_path, url_signing_secret="s"), _local_objects(tmp_path),
                         Clock())
    catalogues.publish(svc, preflight.compact(double.client.object_info()), "default")
    templates.put_template(svc, Caller("k"), "t", {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}})
    for pool in ("default.json/x", "../x", "gpu-we-do-not-have"):
        with pytest.raises(InvalidInput, match="pool"):
            templates.submit_from_template(svc, Caller("k"), "t", {"pool": pool, "inputs": {}})
