"""queue_position on v2 jobs: behind a running job, the jobs waiting in its pool are at 0, 1, 2 (not all at the
pool's depth less one); a 201 carries the place when this process has just read its pool's queue, else null."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import ALICE, Server, running_server, wait_until

from comfy_saas.jobs import keys
from comfy_saas.v2 import jobs as v2jobs

IMAGE = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}}
SLOWLY = {"image": ["1", 0], "steps": 1000, "delay": 0.05, "send_preview": False, "send_text": False, "seed": 0}
SLOW = {"1": IMAGE, "2": {"class_type": "SlowPassthrough", "inputs": SLOWLY},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}}}
QUICK = {"1": IMAGE, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "quick"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("places")) as s:
        yield s


def post(srv: Server, workflow: dict) -> dict:
    made = srv.call("POST", "/api/v2/jobs", ALICE, json={"workflow": workflow})
    assert made.status_code == 201, made.text
    return made.json()


def test_waiting_jobs_are_placed_behind_the_running_one(srv: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = srv.stack.services.store
    running = post(srv, SLOW)["id"]
    wait_until(lambda: srv.call("GET", f"/api/v2/jobs/{running}", ALICE).json()["status"] == "running", 30, "a start")
    wait_until(lambda: store.taken_slot("default") == store.get(running).index_slots[keys.ALL], 10, "its slot noted")
    monkeypatch.setattr(v2jobs, "QUEUE_TTL_S", 0.0)  # every view reads its pool afresh
    waiting = [post(srv, QUICK) for _ in range(3)]
    assert [w["queue_position"] for w in waiting] == [None, None, None]  # nothing read just before: unknown
    places = [srv.call("GET", f"/api/v2/jobs/{w['id']}", ALICE).json()["queue_position"] for w in waiting]
    assert places == [0, 1, 2]
    listed = srv.call("GET", "/api/v2/jobs?status=queued", ALICE).json()["jobs"]
    assert sorted(j["queue_position"] for j in listed) == [0, 1, 2]
    monkeypatch.setattr(v2jobs, "QUEUE_TTL_S", 3600.0)  # what the listing just read is what the next 201 uses
    assert post(srv, QUICK)["queue_position"] == 3
    for job_id in [running] + [w["id"] for w in waiting]:
        srv.call("POST", f"/api/v2/jobs/{job_id}/cancel", ALICE)
