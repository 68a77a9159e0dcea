"""One drain input of a pool's Modal worker class, as plain code: hold a slot, drain until idle or until the
input's deadline, give the slot back, and wake the pool again for whatever is left.

The deadline is the input's start (taken at method entry) plus the pool's Modal timeout, less a margin for
the last job's upload and finish; a job whose timeout does not fit is handed back, and the wake at the end
spawns a fresh input (with a fresh timeout) for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_saas.config.deploy import Pool
from comfy_saas.jobs.wakeups import Wakeups
from comfy_saas.runner.worker import Worker


@dataclass(frozen=True)
class DrainPlan:
    """A pool's drain settings, from deploy.toml."""

    pool: str
    timeout_s: float  # the Modal timeout of one drain input
    margin_s: float = 300.0  # kept back for the last job's upload and finish
    idle_s: float = 10.0  # an ordinary drain returns after its queue has been empty this long
    floor: int = 0  # slots below this hold floor drains, which keep pulling while idle
    max_job_s: float | None = None  # a longer job fits no drain and fails (default: timeout_s - margin_s)

    @classmethod
    def for_pool(cls, pool: Pool) -> DrainPlan:
        """The plan of a deploy.toml pool: its jobs are capped (at submit) at what a fresh drain can run."""
        return cls(pool.name, pool.timeout_s, pool.drain_margin_s, pool.drain_idle_s, pool.floor,
                   pool.max_job_timeout_s)

    def deadline(self, started: float) -> float:
        """The last moment (time.monotonic) a job may still be running, for an input started at `started`."""
        return started + self.timeout_s - self.margin_s


def run_drain(worker: Worker, wakeups: Wakeups, plan: DrainPlan, slot: int, started: float) -> int:
    """One drain input; how many wake-ups it handled."""
    worker.pool = plan.pool
    lease = wakeups.lease(plan.pool, slot, worker.worker_id)
    lease.start()
    try:
        handled = worker.drain(plan.idle_s, deadline=plan.deadline(started), lease=lease,
                               keep_pulling=slot < plan.floor,
                               max_job_s=plan.max_job_s or plan.timeout_s - plan.margin_s)
    finally:
        lease.release()
    wakeups.wake(plan.pool)  # a wake-up handed back at the deadline, or work that arrived as this drain left
    return handled
