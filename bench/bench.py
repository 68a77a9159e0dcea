"""Benchmark: the same workflows straight to the ComfyUI double (baseline) and through the whole stack, with the
twins in their local profile (--rpc-ms 0) or in their Modal profile (--rpc-ms 25: every Dict/Queue call is a
25 ms round trip, entries expire, Modal's size limits apply).

    python bench/bench.py --rpc-ms 25 --out bench.json          # full run (about 10 minutes)
    python bench/bench.py --quick --rpc-ms 25 --out bench.json  # smaller counts (about 3 minutes)

Writes JSON with rpc_ms, submit_p50_ms, overhead_p50_ms (through the stack minus direct), list_page_ms (one
page of 20 among 100,000 stored jobs), metrics_ms (one /metrics render), sweep_10k_s (the sweeper's total time,
over as many runs as it needs, to examine and act on 10,000 queued/running jobs among 100,000 stored; with
sweep_runs and sweep_run_max_s), round_trips (operation -> sequential Dict/Queue calls, measured as the time
an operation gains per millisecond of latency), and the older keys: overhead_p99_ms, overhead_ratio,
submit_p99_ms, pickup_p50/p99_ms, cancel_p50/p99_ms, drain_jobs_per_s, worker_rss_mb. Speed goals live here,
never in the tests; `goals_met` says which were met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfy_saas import modal_runtime  # noqa: E402
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile  # noqa: E402
from comfy_saas.config import Settings  # noqa: E402
from comfy_saas.config.settings import ComfyUISource, TwinConfig  # noqa: E402
from comfy_saas.jobs import cleanup, keys  # noqa: E402
from comfy_saas.jobs.model import Progress, Status, utcnow  # noqa: E402
from comfy_saas.jobs.operations import Caller, cancel_job, get_job, list_jobs, submit_job  # noqa: E402
from comfy_saas.jobs.request import JobRequest, new_job  # noqa: E402
from comfy_saas.jobs.services import Services, local_services  # noqa: E402
from comfy_saas.local import LocalStack, StackOptions, free_port  # noqa: E402
from comfy_saas.runner.comfy_client import ComfyClient  # noqa: E402
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess  # noqa: E402
from comfy_saas.web import metrics  # noqa: E402

# Goals by latency per call: today's at 0 ms, the Modal profile's at 25 ms (issue 11).
GOALS: dict[float, dict[str, float]] = {
    0: {"overhead_p50_ms": 30, "overhead_p99_ms": 100, "overhead_ratio": 1.02, "submit_p99_ms": 20,
        "pickup_p99_ms": 100, "cancel_p99_ms": 1500},
    25: {"submit_p50_ms": 60, "overhead_p50_ms": 200, "list_page_ms": 100, "metrics_ms": 150, "sweep_runs": 3,
         "sweep_run_max_s": 55, "cancel_p99_ms": 1500},
}
CALLER = Caller("bench")
IDLE_POOL = "bench_idle"  # a pool no local worker serves: its jobs stay queued


def workflow(color: int, slow_steps: int = 0) -> dict[str, Any]:
    wf: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                       "color": color}}}
    src = "1"
    if slow_steps:
        wf["3"] = {"class_type": "SlowPassthrough", "inputs": {"image": ["1", 0], "steps": slow_steps, "delay": 0.1,
                                                               "send_preview": False, "send_text": False, "seed": 0}}
        src = "3"
    wf["2"] = {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": "bench"}}
    return wf


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def wait_for(predicate: Callable[[], Any], timeout_s: float = 120, every_s: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(every_s)
    raise TimeoutError("benchmark step did not finish")


def settings_for(data_dir: Path, rpc_ms: float, comfyui_args: str = "", **changes: Any) -> Settings:
    """Bench settings: no API keys, an idle pool, the twins in the profile the latency asks for."""
    twin = TwinConfig(profile="modal" if rpc_ms else "local", rpc_ms=rpc_ms)
    return Settings(data_dir=data_dir, url_signing_secret="bench", allow_anonymous=True, heartbeat_interval_s=5.0,
                    cancel_poll_s=0.25, pools=f"default,{IDLE_POOL}", comfyui=ComfyUISource(args=comfyui_args),
                    twin=twin, **changes)


# --- baseline: straight to the double -------------------------------------------------------------


def baseline(exec_s: float, runs: int, tmp: Path) -> list[float]:
    """Wall time of a prompt sent directly to a double that takes exec_s per prompt."""
    proc = ComfyProcess(DOUBLE_DIR, free_port(), ["--output-directory", str(tmp / "base-out"),
                                                  "--input-directory", str(tmp / "base-in"),
                                                  "--temp-directory", str(tmp / "base"),
                                                  "--double-exec-delay", str(exec_s)])
    proc.start()
    client = ComfyClient(proc.url)
    stream = client.events()
    stream.open()
    times = []
    try:
        for i in range(runs):
            started = time.monotonic()
            pid = f"base-{i}"
            client.queue_prompt(workflow(1000 + i), stream.client_id, pid)
            while True:
                event = stream.next(30)
                if event is not None and event.type == "execution_success" and event.prompt_id == pid:
                    break
            client.history(pid)  # a caller needs the outputs too
            times.append(time.monotonic() - started)
    finally:
        stream.close()
        proc.stop()
    return times


# --- through the stack -----------------------------------------------------------------------------


class Stack:
    """The local stack with its HTTP API on a free port; workers serve the default pool only."""

    def __init__(self, data_dir: Path, rpc_ms: float, workers: int, exec_s: float = 0.0) -> None:
        import uvicorn

        from comfy_saas.web.http import create_app

        port = free_port()
        args = f"--double-exec-delay {exec_s}" if exec_s else ""
        self.stack = LocalStack(settings_for(data_dir, rpc_ms, args),
                                StackOptions(port=port, workers=workers, sweep_interval_s=3600,
                                             webhook_interval_s=3600, pools=["default"]))
        self.stack.start()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.stack.services), host="127.0.0.1", port=port,
                                                    log_level="error"))
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_for(lambda: self.server.started, 30, 0.01)
        self.base = f"http://127.0.0.1:{port}"
        self.svc = self.stack.services

    def submit(self, wf: dict[str, Any], **extra: Any) -> str:
        return http("POST", f"{self.base}/v1/jobs", {"workflow": wf, **extra})["id"]

    def finished(self, job_id: str) -> dict[str, Any]:
        """The job once it has ended, seen the way a client sees it: GET /v1/jobs/{id} as fast as it answers."""
        return wait_for(lambda: (j := http("GET", f"{self.base}/v1/jobs/{job_id}"))["status"] in
                        {"completed", "failed", "cancelled"} and j, every_s=0)

    def close(self) -> None:
        self.server.should_exit = True
        self.stack.stop()


def through_stack(exec_s: float, runs: int, tmp: Path, rpc_ms: float) -> tuple[list[float], list[float]]:
    """(end-to-end seconds, pickup seconds) of jobs run one at a time on an idle worker."""
    stack = Stack(tmp / "stack", rpc_ms, workers=1, exec_s=exec_s)
    totals, pickups = [], []
    try:
        for i in range(runs):
            started = time.monotonic()
            job = stack.finished(stack.submit(workflow(2000 + i)))
            totals.append(time.monotonic() - started)
            pickups.append(job["timings"]["queue_wait_ms"] / 1000)
    finally:
        stack.close()
    return totals, pickups


def submit_latency(count: int, tmp: Path, rpc_ms: float) -> list[float]:
    """Seconds per POST /v1/jobs to a pool nobody serves (so the jobs stay queued)."""
    stack = Stack(tmp / "submit", rpc_ms, workers=1)
    try:
        times = []
        for i in range(count):
            started = time.monotonic()
            stack.submit(workflow(i), pool=IDLE_POOL)
            times.append(time.monotonic() - started)
        return times
    finally:
        stack.close()


def cancel_latency(runs: int, tmp: Path, rpc_ms: float) -> list[float]:
    """Seconds from POST .../cancel of a running job to the client seeing it cancelled."""
    stack = Stack(tmp / "cancel", rpc_ms, workers=1)
    times = []
    try:
        for i in range(runs):
            job_id = stack.submit(workflow(3000 + i, slow_steps=200))
            wait_for(lambda job_id=job_id: (j := stack.svc.store.get(job_id)).progress and j.progress.step)
            started = time.monotonic()
            http("POST", f"{stack.base}/v1/jobs/{job_id}/cancel")
            stack.finished(job_id)
            times.append(time.monotonic() - started)
    finally:
        stack.close()
    return times


def drain_rate(jobs: int, workers: int, tmp: Path, rpc_ms: float) -> float:
    """Jobs per second when `jobs` zero-time jobs are already queued and `workers` take them at once,
    from the first job started to the last finished (ComfyUI start-up is per container, not per job)."""
    settings = settings_for(tmp / f"drain-{workers}", rpc_ms)
    svc = local_services(settings)
    with ThreadPoolExecutor(16) as pool:  # queued before the workers start; not what is measured
        ids = list(pool.map(lambda i: submit_job(svc, CALLER, {"workflow": workflow(i)})[0]["id"], range(jobs)))
    stack = LocalStack(settings, StackOptions(workers=workers, sweep_interval_s=3600, webhook_interval_s=3600,
                                              pools=["default"]))
    stack.start()
    try:
        wait_all_finished(svc, ids, 600)
    finally:
        stack.stop()
    done = svc.store.get_many(ids)
    span = max(j.finished_at for j in done) - min(j.started_at for j in done)
    return round(jobs / span.total_seconds(), 1)


def wait_all_finished(svc: Services, ids: list[str], timeout_s: float) -> None:
    """Until every job has ended, reading only the ones not seen finished yet, a few at a time, so watching
    does not load the store the workers are measured on."""
    pending = list(ids)

    def done() -> bool:
        batch = pending[:100]
        finished = {j.id for j in svc.store.get_many(batch) if j is not None and j.terminal}
        pending[:100] = [i for i in batch if i not in finished]
        return not pending
    wait_for(done, timeout_s, 0.2)


def worker_rss_mb(jobs: int, tmp: Path) -> float:
    """Peak RSS of a `comfy-saas worker` process (ComfyUI excluded) after running `jobs` jobs."""
    data = tmp / "rss"
    svc = local_services(settings_for(data, 0))
    double = ComfyProcess(DOUBLE_DIR, free_port(), ["--output-directory", str(tmp / "rss-out"),
                                                    "--input-directory", str(tmp / "rss-in"),
                                                    "--temp-directory", str(tmp / "rss-tmp")])
    double.start()
    exe = Path(sys.executable).parent / "comfy-saas"
    env = {"COMFY_DATA_DIR": str(data), "COMFY_URL_SIGNING_SECRET": "bench", "PATH": "/usr/bin:/bin",
           "COMFY_POOLS": f"default,{IDLE_POOL}"}
    proc = subprocess.Popen([str(exe), "worker", "--comfyui-url", double.url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ids = [submit_job(svc, CALLER, {"workflow": workflow(i)})[0]["id"] for i in range(jobs)]
        wait_all_finished(svc, ids, 300)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        return round(peak_kb / 1024, 1)
    finally:
        proc.terminate()
        proc.wait(10)
        double.stop()


# --- the store at scale: 100,000 stored jobs --------------------------------------------------------


def seed(db: Path, stored: int, active: int) -> dict[str, list[str]]:
    """`stored` jobs straight into the twins' SQLite file, the newest `active` of them queued or running and
    the rest completed, with the index and a sweeper that has seen every older job. Queued jobs have their
    wake-ups in the queue and workers have taken wake-ups up to now; some active jobs are due: queued ones
    whose wake-up was lost, running ones whose worker went silent, queued ones past the queue timeout."""
    profile = Profile.modal(rpc_ms=0)  # Modal's limits and expiry, no latency
    d, q = LocalDict(db, "jobs", profile), LocalQueue(db, "work", profile=profile)
    now = utcnow()
    template = new_job(JobRequest(workflow=workflow(0)), "x", "default", now).to_record()
    kinds: dict[str, list[str]] = {k: [] for k in ("completed", *_ACTIVE_MIX)}
    entries: dict[str, Any] = {}
    wakeups: list[dict[str, Any]] = []
    for n in range(1, stored + 1):
        kind = "completed" if n <= stored - active else _ACTIVE_MIX[n % len(_ACTIVE_MIX)]
        job_id = f"bench{n:07d}"
        record, live = _record(template, job_id, kind, now, n)
        entries[keys.job(job_id)] = record
        entries[keys.index_slot(keys.ALL, n)] = job_id
        if live is not None:
            entries[keys.progress(job_id)] = live
        if kind == "queued":
            wakeups.append({"id": job_id, "job": record, "at": now.timestamp() - 1})
        kinds[kind].append(job_id)
        if len(entries) >= 9_000:
            d.update(entries)
            entries = {}
    entries[keys.index_head(keys.ALL)] = stored
    entries[keys.maintenance("sweep")] = {"gen": "", "chunks": 0, "ingested": stored - active}
    entries[keys.maintenance("taken:default")] = now.timestamp()
    d.update(entries)
    q.put_many(wakeups, partition=keys.partition("default"))
    return kinds


# Of every 20 active jobs: 6 queued, 9 running, and due: 2 with a lost wake-up, 1 whose worker went silent,
# 2 past the queue timeout (so the queue ends at 45% of a partition's 5,000).
_ACTIVE_MIX = ("queued",) * 6 + ("running",) * 9 + ("lost_wakeup",) * 2 + ("stale",) + ("queue_timeout",) * 2


def _record(template: dict[str, Any], job_id: str, kind: str, now: Any, n: int) -> tuple[dict, dict | None]:
    """A job record of the given kind (and the running attempt's heartbeat, if it runs)."""
    ages = {"completed": 7_200, "queued": 1, "lost_wakeup": 120, "running": 60, "stale": 600,
            "queue_timeout": 7 * 3_600}
    created = now - timedelta(seconds=ages[kind], microseconds=n)
    record = {**template, "id": job_id, "created_at": created.isoformat(), "updated_at": created.isoformat()}
    if kind == "completed":
        return {**record, "status": "completed", "claim_seq": 2, "attempts": 1, "started_at": created.isoformat(),
                "finished_at": (created + timedelta(seconds=5)).isoformat()}, None
    if kind in {"running", "stale"}:
        beat = (now - timedelta(seconds=2 if kind == "running" else 300)).isoformat()
        record = {**record, "status": "running", "claim_seq": 1, "attempts": 1, "started_at": beat,
                  "heartbeat_at": beat, "worker_id": "bench-worker"}
        return record, {"claim": 1, "heartbeat_at": beat, "progress": None, "events": []}
    return record, None


def store_at_scale(tmp: Path, rpc_ms: float, stored: int, active: int) -> dict[str, Any]:
    """list_page_ms and the sweep over `active` jobs among `stored`, on the profile."""
    db = tmp / "scale" / "state.sqlite3"
    db.parent.mkdir(parents=True)
    kinds = seed(db, stored, active)
    settings = settings_for(db.parent, rpc_ms)
    profile = Profile.modal(rpc_ms) if rpc_ms else Profile()
    svc = Services.over(LocalDict(db, "jobs", profile), LocalQueue(db, "work", profile=profile), settings)
    pages = [_timed(lambda: list_jobs(svc, CALLER, limit=20)) for _ in range(10)]
    runs = sweep_until_examined(svc, active)
    stale, timed_out = svc.store.get_many(kinds["stale"]), svc.store.get_many(kinds["queue_timeout"])
    due_left = sum(j.status is Status.RUNNING for j in stale) + sum(j.status is Status.QUEUED for j in timed_out)
    return {"list_page_ms": ms(statistics.median(pages)), "list_stored": stored, "sweep_active": active,
            "sweep_stored": stored, "sweep_10k_s": round(sum(r["seconds"] for r in runs), 2),
            "sweep_runs": len(runs), "sweep_run_max_s": round(max(r["seconds"] for r in runs), 2),
            "sweep_acted": {k: sum(r.get(k, 0) for r in runs) for k in ("requeue", "fail_queue_timeout",
                                                                         "reenqueue")},
            "sweep_due_left": due_left}


def sweep_until_examined(svc: Services, active: int, max_runs: int = 10) -> list[dict[str, Any]]:
    """The scheduled sweep (sweeper, webhook dispatch, no spawns) run until every active job was examined."""
    runs: list[dict[str, Any]] = []
    examined = 0
    while examined < active and len(runs) < max_runs:
        started = time.monotonic()
        done = modal_runtime.sweep(svc, lambda: {})
        runs.append({**{k: v for k, v in done.items() if ":" not in k}, "seconds": time.monotonic() - started})
        examined += done.get("examined", 0)
    return runs


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- round trips: what each operation gains per ms of latency --------------------------------------


def operation_times(svc: Services, repeats: int) -> dict[str, float]:
    """Median seconds of each hot-path operation, in the order a job meets them."""
    times: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        times.setdefault(name, []).append(time.perf_counter() - started)
        return result

    for i in range(repeats):
        view = timed("submit", lambda i=i: submit_job(svc, CALLER, {"workflow": workflow(i)})[0])
        timed("get", lambda view=view: get_job(svc, CALLER, view["id"]))
        timed("list_page", lambda: list_jobs(svc, CALLER, limit=20))
        wakeup = timed("take_wakeup", lambda: svc.store.next_wakeup("default", timeout_s=5))
        job = timed("start", lambda wakeup=wakeup: svc.lifecycle.start(wakeup.job, "bench"))
        svc.store.settle(job.id)
        timed("progress", lambda job=job: svc.lifecycle.heartbeat(job, Progress(step=1, steps=2)))
        timed("finish", lambda job=job: svc.lifecycle.finish(job, Status.COMPLETED))
        other = submit_job(svc, CALLER, {"workflow": workflow(i), "pool": IDLE_POOL})[0]
        timed("cancel_queued", lambda other=other: cancel_job(svc, CALLER, other["id"]))
        timed("metrics", lambda: metrics.render(svc))
        timed("sweep", lambda: modal_runtime.sweep(svc, lambda: {}))
        timed("cleanup", lambda: cleanup.cleanup(svc))
    return {name: statistics.median(values) for name, values in times.items()}


def round_trips(tmp: Path, rpc_ms: float, repeats: int) -> dict[str, int]:
    """Sequential Dict/Queue calls per operation: (time at rpc_ms - time at 0) / rpc_ms, in stores whose
    workers have published the node catalogue, as a deployment's have."""
    nodes = node_catalogue(tmp)
    times = []
    for name, rpc in (("rt-0", 0.0), ("rt-slow", rpc_ms)):
        svc = local_services(settings_for(tmp / name, rpc))
        svc.store.save_object_info(nodes)
        times.append(operation_times(svc, repeats))
    fast, slow = times
    return {name: round((slow[name] - fast[name]) * 1000 / rpc_ms) for name in fast}


def node_catalogue(tmp: Path) -> dict[str, Any]:
    """The double's node catalogue, compacted the way a worker publishes it."""
    from comfy_saas.workflows import preflight

    proc = ComfyProcess(DOUBLE_DIR, free_port(), ["--output-directory", str(tmp / "cat-out"),
                                                  "--input-directory", str(tmp / "cat-in"),
                                                  "--temp-directory", str(tmp / "cat")])
    proc.start()
    try:
        return preflight.compact(ComfyClient(proc.url).object_info())
    finally:
        proc.stop()


# --- the run ---------------------------------------------------------------------------------------


def run(quick: bool, rpc_ms: float) -> dict[str, Any]:
    exec_s, runs = (0.5, 8) if quick else (2.0, 20)
    stored, active = (20_000, 2_000) if quick else (100_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        base = baseline(exec_s, runs, tmp)
        total, pickup = through_stack(exec_s, runs, tmp, rpc_ms)
        overhead = [t - statistics.median(base) for t in total]
        submits = submit_latency(100 if quick else 1000, tmp, rpc_ms)
        cancels = cancel_latency(4 if quick else 20, tmp, rpc_ms)
        drain_jobs = 60 if quick else 1000
        drain = {str(w): drain_rate(drain_jobs, w, tmp, rpc_ms) for w in (1, 2, 4)}
        metrics_svc = local_services(settings_for(tmp / "submit", rpc_ms))  # a store 1,000 jobs have moved in
        scrape = [_timed(lambda: metrics.render(metrics_svc)) for _ in range(10)]
        result = {
            "quick": quick, "rpc_ms": rpc_ms, "twin_profile": "modal" if rpc_ms else "local",
            "workflow_exec_s": exec_s, "runs": runs,
            "baseline_p50_ms": ms(statistics.median(base)), "stack_p50_ms": ms(statistics.median(total)),
            "overhead_p50_ms": ms(statistics.median(overhead)), "overhead_p99_ms": ms(pct(overhead, 99)),
            "overhead_ratio": round(statistics.median(total) / statistics.median(base), 4),
            "submit_p50_ms": ms(statistics.median(submits)), "submit_p99_ms": ms(pct(submits, 99)),
            "pickup_p50_ms": ms(statistics.median(pickup)), "pickup_p99_ms": ms(pct(pickup, 99)),
            "cancel_p50_ms": ms(statistics.median(cancels)), "cancel_p99_ms": ms(pct(cancels, 99)),
            "drain_jobs": drain_jobs, "drain_jobs_per_s": drain,
            "metrics_ms": ms(statistics.median(scrape)),
            **store_at_scale(tmp, rpc_ms, stored, active),
            "round_trips": round_trips(tmp, rpc_ms or 25.0, 3 if quick else 5),
            "worker_rss_mb": worker_rss_mb(10 if quick else 50, tmp),
        }
        result["goals_met"] = goals_met(result)
        return result


def goals_met(result: dict[str, Any]) -> dict[str, bool]:
    """Each goal for this latency: met or not (ratios and times at most the goal)."""
    goals = GOALS.get(result["rpc_ms"], {})
    return {k: result[k] <= goal for k, goal in goals.items()}


def table(result: dict[str, Any]) -> str:
    goals = GOALS.get(result["rpc_ms"], {})
    keys_shown = ("baseline_p50_ms", "stack_p50_ms", "overhead_p50_ms", "overhead_p99_ms", "overhead_ratio",
                  "submit_p50_ms", "submit_p99_ms", "pickup_p50_ms", "pickup_p99_ms", "cancel_p50_ms",
                  "cancel_p99_ms", "list_page_ms", "metrics_ms", "sweep_10k_s", "sweep_runs", "sweep_run_max_s",
                  "drain_jobs_per_s", "worker_rss_mb")
    lines = [f"rpc_ms={result['rpc_ms']} ({result['twin_profile']} profile)", f"{'metric':<18} {'measured':>28}  goal"]
    lines += [f"{k:<18} {json.dumps(result[k]):>28}  {goals.get(k, '')}" for k in keys_shown]
    lines.append("round trips: " + ", ".join(f"{k} {v}" for k, v in result["round_trips"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs and smaller stores")
    parser.add_argument("--rpc-ms", type=float, default=0.0,
                        help="latency added to every Dict/Queue call (the twins' Modal profile); 0: local twins")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args.quick, args.rpc_ms)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    missed = [k for k, ok in result["goals_met"].items() if not ok]
    print(f"took {result['bench_seconds']} s; JSON in {args.out}; goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
