"""Benchmark: the same workflows straight to the ComfyUI double (baseline) and through the whole stack.

    python bench/bench.py --out bench.json          # full run
    python bench/bench.py --quick --out bench.json  # under a minute

Prints a table and writes JSON with overhead_p50_ms, overhead_p99_ms, overhead_ratio, submit_p99_ms,
pickup_p99_ms, cancel_p99_ms, drain_jobs_per_s (by worker count), list_ms_1k, list_ms_100k and
worker_rss_mb. Speed goals live here, never in the tests.
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
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from comfy_saas.backends.twins import LocalDict, LocalQueue  # noqa: E402
from comfy_saas.config import Settings  # noqa: E402
from comfy_saas.jobs import keys  # noqa: E402
from comfy_saas.jobs.model import utcnow  # noqa: E402
from comfy_saas.jobs.request import JobRequest, new_job  # noqa: E402
from comfy_saas.jobs.services import local_services  # noqa: E402
from comfy_saas.jobs.store import JobStore  # noqa: E402
from comfy_saas.local import LocalStack, StackOptions, free_port  # noqa: E402
from comfy_saas.runner.comfy_client import ComfyClient  # noqa: E402
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess  # noqa: E402

GOALS = {"overhead_p50_ms": 30, "overhead_p99_ms": 100, "overhead_ratio": 1.02, "submit_p99_ms": 20,
         "pickup_p99_ms": 100, "cancel_p99_ms": 1500}


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


def wait_for(predicate, timeout_s: float = 120, every_s: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(every_s)
    raise TimeoutError("benchmark step did not finish")


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
    """The local stack with its HTTP API on a free port."""

    def __init__(self, data_dir: Path, workers: int, exec_s: float = 0.0) -> None:
        import uvicorn

        from comfy_saas.web.http import create_app

        port = free_port()
        settings = Settings(data_dir=data_dir, url_signing_secret="bench", heartbeat_interval_s=5.0, require_auth=False,
                            cancel_poll_s=0.25)
        args = ("--double-exec-delay", str(exec_s)) if exec_s else ()
        self.stack = LocalStack(settings, StackOptions(port=port, workers=workers, comfyui_args=args,
                                                       sweep_interval_s=3600, webhook_interval_s=3600))
        self.stack.start()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.stack.services), host="127.0.0.1", port=port,
                                                    log_level="error"))
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_for(lambda: self.server.started, 30, 0.01)
        self.base = f"http://127.0.0.1:{port}"
        self.store = self.stack.services.store

    def submit(self, wf: dict[str, Any], **extra: Any) -> str:
        return http("POST", f"{self.base}/v1/jobs", {"workflow": wf, **extra})["id"]

    def finished(self, job_id: str):
        return wait_for(lambda: (j := self.store.get(job_id)) is not None and j.terminal and j)

    def close(self) -> None:
        self.server.should_exit = True
        self.stack.stop()


def through_stack(exec_s: float, runs: int, tmp: Path) -> tuple[list[float], list[float]]:
    """(end-to-end seconds, pickup seconds) of jobs run one at a time on an idle worker."""
    stack = Stack(tmp / "stack", workers=1, exec_s=exec_s)
    totals, pickups = [], []
    try:
        for i in range(runs):
            started = time.monotonic()
            job = stack.finished(stack.submit(workflow(2000 + i)))
            totals.append(time.monotonic() - started)
            pickups.append((job.started_at - job.created_at).total_seconds())
    finally:
        stack.close()
    return totals, pickups


def submit_latency(count: int, tmp: Path) -> list[float]:
    stack = Stack(tmp / "submit", workers=1)
    try:
        times = []
        for i in range(count):
            started = time.monotonic()
            stack.submit(workflow(i), pool="bench-idle")  # no worker takes these
            times.append(time.monotonic() - started)
        return times
    finally:
        stack.close()


def cancel_latency(runs: int, tmp: Path) -> list[float]:
    stack = Stack(tmp / "cancel", workers=1)
    times = []
    try:
        for i in range(runs):
            job_id = stack.submit(workflow(3000 + i, slow_steps=200))
            wait_for(lambda job_id=job_id: (j := stack.store.get(job_id)).progress and j.progress.step)
            started = time.monotonic()
            http("POST", f"{stack.base}/v1/jobs/{job_id}/cancel")
            stack.finished(job_id)
            times.append(time.monotonic() - started)
    finally:
        stack.close()
    return times


def drain_rate(jobs: int, workers: int, tmp: Path) -> float:
    """Jobs per second when `jobs` zero-time jobs are already queued and `workers` take them at once,
    from the first job started to the last finished (ComfyUI start-up is per container, not per job)."""
    svc = local_services(Settings(data_dir=tmp / f"drain-{workers}", url_signing_secret="bench"))
    ids = [svc.store.submit(JobRequest(workflow=workflow(i)))[0].id for i in range(jobs)]
    stack = LocalStack(svc.settings, StackOptions(workers=workers, sweep_interval_s=3600, webhook_interval_s=3600))
    stack.start()
    try:
        wait_for(lambda: all(svc.store.get(i).terminal for i in ids), timeout_s=600, every_s=0.1)
    finally:
        stack.stop()
    done = [svc.store.get(i) for i in ids]
    span = max(j.finished_at for j in done) - min(j.started_at for j in done)
    return round(jobs / span.total_seconds(), 1)


def list_latency(total: int, tmp: Path, calls: int = 30) -> float:
    """Median milliseconds for one page of 20, newest first, with `total` jobs stored."""
    db = tmp / f"list-{total}.sqlite3"
    d = LocalDict(db)
    now, entries = utcnow(), {}
    for i in range(1, total + 1):
        job = new_job(JobRequest(workflow=workflow(0)), f"job{i:07d}", "default", now + timedelta(microseconds=i))
        entries[keys.job(job.id)] = job.to_record()
        entries[keys.index_slot(keys.ALL, i)] = job.id
    entries[keys.index_head(keys.ALL)] = total
    d.update(entries)
    store = JobStore(d, LocalQueue(db), Settings(data_dir=tmp))
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        store.list_jobs(limit=20)
        times.append(time.perf_counter() - started)
    return ms(statistics.median(times))


def worker_rss_mb(jobs: int, tmp: Path) -> float:
    """Peak RSS of a `comfy-saas worker` process (ComfyUI excluded) after running `jobs` jobs."""
    data = tmp / "rss"
    settings = Settings(data_dir=data, url_signing_secret="bench")
    svc = local_services(settings)
    double = ComfyProcess(DOUBLE_DIR, free_port(), ["--output-directory", str(tmp / "rss-out"),
                                                    "--input-directory", str(tmp / "rss-in"),
                                                    "--temp-directory", str(tmp / "rss-tmp")])
    double.start()
    exe = Path(sys.executable).parent / "comfy-saas"
    env = {"COMFY_DATA_DIR": str(data), "COMFY_URL_SIGNING_SECRET": "bench", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(exe), "worker", "--comfyui-url", double.url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ids = [svc.store.submit(JobRequest(workflow=workflow(i)))[0].id for i in range(jobs)]
        wait_for(lambda: all(svc.store.get(i).terminal for i in ids), 300, 0.05)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        return round(peak_kb / 1024, 1)
    finally:
        proc.terminate()
        proc.wait(10)
        double.stop()


def run(quick: bool) -> dict[str, Any]:
    exec_s, runs = (0.5, 8) if quick else (2.0, 20)
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        base = baseline(exec_s, runs, tmp)
        total, pickup = through_stack(exec_s, runs, tmp)
        overhead = [t - statistics.median(base) for t in total]
        submits = submit_latency(100 if quick else 1000, tmp)
        cancels = cancel_latency(4 if quick else 20, tmp)
        drain_jobs = 60 if quick else 1000
        drain = {str(w): drain_rate(drain_jobs, w, tmp) for w in (1, 2, 4)}
        return {
            "quick": quick, "workflow_exec_s": exec_s, "runs": runs,
            "baseline_p50_ms": ms(statistics.median(base)), "stack_p50_ms": ms(statistics.median(total)),
            "overhead_p50_ms": ms(statistics.median(overhead)), "overhead_p99_ms": ms(pct(overhead, 99)),
            "overhead_ratio": round(statistics.median(total) / statistics.median(base), 4),
            "submit_p50_ms": ms(statistics.median(submits)), "submit_p99_ms": ms(pct(submits, 99)),
            "pickup_p50_ms": ms(statistics.median(pickup)), "pickup_p99_ms": ms(pct(pickup, 99)),
            "cancel_p50_ms": ms(statistics.median(cancels)), "cancel_p99_ms": ms(pct(cancels, 99)),
            "drain_jobs": drain_jobs, "drain_jobs_per_s": drain,
            "list_ms_1k": list_latency(1_000, tmp), "list_ms_100k": list_latency(100_000 if not quick else 20_000, tmp),
            "list_big_n": 100_000 if not quick else 20_000,
            "worker_rss_mb": worker_rss_mb(10 if quick else 50, tmp),
        }


def table(result: dict[str, Any]) -> str:
    rows = [(k, result[k], GOALS.get(k)) for k in (
        "baseline_p50_ms", "stack_p50_ms", "overhead_p50_ms", "overhead_p99_ms", "overhead_ratio", "submit_p50_ms",
        "submit_p99_ms", "pickup_p50_ms", "pickup_p99_ms", "cancel_p50_ms", "cancel_p99_ms", "list_ms_1k",
        "list_ms_100k", "worker_rss_mb")]
    rows.append(("drain_jobs_per_s", result["drain_jobs_per_s"], ">= 200 with 4 workers"))
    lines = [f"{'metric':<18} {'measured':>26}  goal"]
    lines += [f"{k:<18} {json.dumps(v):>26}  {'' if g is None else g}" for k, v, g in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs: under a minute")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(args.quick)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"took {result['bench_seconds']} s; JSON in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
