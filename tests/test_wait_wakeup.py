"""`?wait=N` ends when this process writes the job's outcome, not at the waiter's next poll."""

from __future__ import annotations

import asyncio
import threading

from conftest import submit, wait_until

from comfy_saas.jobs import changes
from comfy_saas.jobs.model import Status
from comfy_saas.web import waiting


def test_a_wait_ends_with_the_outcome_written_in_this_process(svc, monkeypatch):
    monkeypatch.setattr(waiting, "FIRST_POLL_S", 3600.0)  # a poll would come far too late to end this test
    monkeypatch.setattr(waiting, "MAX_POLL_S", 3600.0)
    job = submit(svc)

    def finish_once_waited_on() -> None:
        wait_until(lambda: job.id in changes._watchers, 10, "the waiter")
        started = svc.lifecycle.start(job, "w-test")
        svc.store.settle(job.id)
        svc.lifecycle.finish(started, Status.COMPLETED)

    finisher = threading.Thread(target=finish_once_waited_on, daemon=True)
    finisher.start()
    view, finished = asyncio.run(asyncio.wait_for(waiting.until_finished(svc, job.id, 3000.0), 30))
    finisher.join(10)
    assert finished and view["status"] == "completed"
    assert job.id not in changes._watchers  # nothing is left behind for a job nobody waits on
