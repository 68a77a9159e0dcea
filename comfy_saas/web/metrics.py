"""Prometheus text from the counters every process keeps as jobs move (jobs/counters.py): jobs by status,
active jobs per pool, queue depth per pool, phase latency histograms, webhook outcomes.

A scrape reads the live counter shards and the queue lengths in three round trips, whatever the number of
stored jobs; shards of processes gone quiet are folded into one total by the sweeper (jobs/rollup.py).
"""

from __future__ import annotations

from collections import Counter

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs.counters import BUCKETS_S, PHASES, active_gauge
from comfy_saas.jobs.model import TERMINAL_STATUSES, Status
from comfy_saas.jobs.services import Services


def totals(svc: Services) -> Counter:
    """Every counter summed over the registered shards and the rolled-up total. This process's shard is
    written alongside the reads (no extra round trip), so a scrape shows its own moves and a scrape served by
    another container never shows less than this one did."""
    mine = svc.lifecycle.counters
    _, registry = run_all([lambda: svc.store.save_counters(mine), svc.store.counter_registry])
    own, written = mine.written()
    total: Counter = Counter(registry.rollup.get("counts", {}))
    folded = set(registry.rollup.get("folded", {}))
    for name, shard in registry.shards.items():
        if shard is not None and name not in folded and name != own:
            total.update(shard.get("counts", {}))
    if own not in folded:  # folded, it is in the rollup as written, and nothing was written to it since
        total.update(written)
    return total


def render(svc: Services) -> str:
    """The metrics page: three round trips, the queue depths read alongside the counters."""
    pools = sorted(set(svc.settings.pool_table()) | {svc.settings.default_pool})
    total, *depths = run_all([lambda: totals(svc), *(lambda p=p: svc.store.queue_depth(p) for p in pools)])
    active = active_gauge(total)
    if unlisted := sorted({p for _, p in active if p} - set(pools)):  # pools no longer configured
        pools, depths = pools + unlisted, depths + run_all([lambda p=p: svc.store.queue_depth(p) for p in unlisted])
    lines = _jobs(total, active) + _active(active)
    lines += ["# HELP comfy_queue_depth Wake-ups waiting per pool.", "# TYPE comfy_queue_depth gauge"]
    lines += [f'comfy_queue_depth{{pool="{p}"}} {d}' for p, d in zip(pools, depths, strict=True)]
    lines += _histogram(total) + _webhooks(total)
    return "\n".join(lines) + "\n"


def _jobs(total: Counter, active: dict[tuple[str, str], float]) -> list[str]:
    lines = ["# HELP comfy_jobs Jobs queued or running now, and jobs that reached each final status.",
             "# TYPE comfy_jobs gauge"]
    for status in Status:
        if status in TERMINAL_STATUSES:
            value = sum(v for k, v in total.items() if k.startswith(f"entered|{status.value}|"))
        else:
            value = sum(v for (s, _), v in active.items() if s == status.value)
        lines.append(f'comfy_jobs{{status="{status.value}"}} {value:g}')
    return lines


def _active(active: dict[tuple[str, str], float]) -> list[str]:
    lines = ["# HELP comfy_pool_jobs Jobs queued or running now, per pool.", "# TYPE comfy_pool_jobs gauge"]
    return lines + [f'comfy_pool_jobs{{pool="{p}",status="{s}"}} {v:g}' for (s, p), v in sorted(active.items()) if p]


def _histogram(total: Counter) -> list[str]:
    name = "comfy_job_phase_seconds"
    lines = [f"# HELP {name} Seconds spent per phase by finished jobs.", f"# TYPE {name} histogram"]
    for phase in PHASES:
        for le in BUCKETS_S:
            lines.append(f'{name}_bucket{{phase="{phase}",le="{le}"}} {total.get(f"phase_le|{phase}|{le}", 0):g}')
        count = total.get(f"phase_count|{phase}", 0)
        lines.append(f'{name}_bucket{{phase="{phase}",le="+Inf"}} {count:g}')
        lines.append(f'{name}_sum{{phase="{phase}"}} {round(total.get(f"phase_sum|{phase}", 0.0), 6)}')
        lines.append(f'{name}_count{{phase="{phase}"}} {count:g}')
    return lines


def _webhooks(total: Counter) -> list[str]:
    lines = ["# HELP comfy_webhook_deliveries Webhook deliveries that ended, by state.",
             "# TYPE comfy_webhook_deliveries gauge"]
    lines += [f'comfy_webhook_deliveries{{state="{s}"}} {total.get(f"delivery|{s}", 0):g}'
              for s in ("delivered", "failed")]
    lines += ["# HELP comfy_webhook_attempts Webhook attempts by outcome.", "# TYPE comfy_webhook_attempts gauge"]
    lines += [f'comfy_webhook_attempts{{outcome="{o}"}} {total.get(f"attempt|{o}", 0):g}'
              for o in ("success", "error")]
    return lines
