"""Prometheus text exposition of recent jobs: counts by status, queue depth, phase latency histograms,
webhook outcomes. It reads a bounded window of the newest jobs through the index, never the whole store."""

from __future__ import annotations

from collections import Counter

from comfy_saas.jobs.model import Job, Status
from comfy_saas.jobs.services import Services

BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PHASES = ("queue_wait", "prepare", "execute", "upload", "finish", "total")


def recent_jobs(svc: Services, window: int) -> list[Job]:
    jobs, cursor = [], None
    while len(jobs) < window:
        page = svc.store.list_jobs(cursor=cursor, limit=min(100, window - len(jobs)))
        jobs.extend(page.jobs)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return jobs


def _histogram(name: str, label: str, values: dict[str, list[float]]) -> list[str]:
    lines = [f"# HELP {name} Seconds spent per phase, over the jobs in the window.", f"# TYPE {name} histogram"]
    for key, samples in values.items():
        for le in BUCKETS_S:
            lines.append(f'{name}_bucket{{{label}="{key}",le="{le}"}} {sum(1 for v in samples if v <= le)}')
        lines.append(f'{name}_bucket{{{label}="{key}",le="+Inf"}} {len(samples)}')
        lines.append(f'{name}_sum{{{label}="{key}"}} {round(sum(samples), 6)}')
        lines.append(f'{name}_count{{{label}="{key}"}} {len(samples)}')
    return lines


def render(svc: Services, window: int = 1000) -> str:
    """The metrics page for the newest `window` jobs."""
    jobs = recent_jobs(svc, window)
    by_status = Counter(j.status.value for j in jobs)
    lines = ["# HELP comfy_jobs Jobs among the newest in the window, by status.", "# TYPE comfy_jobs gauge"]
    lines += [f'comfy_jobs{{status="{s.value}"}} {by_status.get(s.value, 0)}' for s in Status]
    pools = sorted({j.pool for j in jobs} | {svc.settings.default_pool})
    lines += ["# HELP comfy_queue_depth Wake-ups waiting per pool.", "# TYPE comfy_queue_depth gauge"]
    lines += [f'comfy_queue_depth{{pool="{p}"}} {svc.store.queue_depth(p)}' for p in pools]
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    for job in jobs:
        if job.timings is not None:
            for phase in PHASES:
                phases[phase].append(getattr(job.timings, f"{phase}_ms") / 1000)
    lines += _histogram("comfy_job_phase_seconds", "phase", phases)
    lines += _webhooks(svc, jobs)
    lines += ["# HELP comfy_metrics_window_jobs Jobs the window covered.", "# TYPE comfy_metrics_window_jobs gauge",
              f"comfy_metrics_window_jobs {len(jobs)}"]
    return "\n".join(lines) + "\n"


def _webhooks(svc: Services, jobs: list[Job]) -> list[str]:
    states: Counter = Counter()
    attempts: Counter = Counter()
    for job in jobs:
        if job.webhook_url and job.terminal and (delivery := svc.store.webhook(job.id)) is not None:
            states[delivery["state"]] += 1
            for a in delivery["attempts"]:
                ok = a["status_code"] is not None and 200 <= a["status_code"] < 300
                attempts["success" if ok else "error"] += 1
    lines = ["# HELP comfy_webhook_deliveries Webhook deliveries by state.", "# TYPE comfy_webhook_deliveries gauge"]
    lines += [f'comfy_webhook_deliveries{{state="{s}"}} {states.get(s, 0)}' for s in ("pending", "delivered", "failed")]
    lines += ["# HELP comfy_webhook_attempts Webhook attempts by outcome.", "# TYPE comfy_webhook_attempts gauge"]
    lines += [f'comfy_webhook_attempts{{outcome="{o}"}} {attempts.get(o, 0)}' for o in ("success", "error")]
    return lines
