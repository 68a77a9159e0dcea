"""Benchmark: the same workflows side by side on one ComfyUI double (straight to it, through comfy-api-proxy,
through our /v1 and, when mounted, /api/v2), then the store's own measurements, with the twins in their local
profile (--rpc-ms 0) or in their Modal profile (--rpc-ms 25: every Dict/Queue call is a 25 ms round trip,
entries expire, Modal's size limits apply).

    python bench/bench.py --rpc-ms 25 --out bench.json                 # full run (about 10 minutes)
    python bench/bench.py --quick --rpc-ms 25 --out bench.json         # smaller counts (about 3 minutes)
    python bench/bench.py --side-by-side --runs 15 --out side.json     # only the side-by-side (about 2 minutes)

The side-by-side interleaves the legs run by run, each client polling its status route every 5 ms over a kept-alive
connection, and reports per leg p50/p99 end to end, the overhead over direct (p50/p99), submit time, front/back
(median ms from the submit to ComfyUI's execution_start, and from its execution_success to the client seeing the
end, by the times in ComfyUI's history), and for ours the ratio of its end to end to the proxy's
(side_by_side.*.ratio_to_proxy; proxy_ratio for /v1) with the median of each job timing phase. Writes JSON with
rpc_ms, overhead_p50_ms (/v1 minus direct), submit_p50_ms, list_page_ms (one page of 20 among 100,000 stored jobs),
metrics_ms (one /metrics render), sweep_10k_s (the sweeper's total time, over as many runs as it needs, to examine
and act on 10,000 queued/running jobs among 100,000 stored; with sweep_runs and sweep_run_max_s), round_trips
(operation -> sequential Dict/Queue calls, measured as the time an operation gains per millisecond of latency), and
overhead_p99_ms, overhead_ratio, submit_p99_ms, pickup_p50/p99_ms, cancel_p50/p99_ms, drain_jobs_per_s,
worker_rss_mb. Speed goals live here, never in the tests; `goals_met` says which were met.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

# Goals by latency per call: the local twins' at 0 ms, the Modal profile's at 25 ms (issues 11 and 21).
# proxy_ratio: our /v1 end to end over comfy-api-proxy's, on the same double in the same run.
GOALS: dict[float, dict[str, float]] = {
    0: {"overhead_p50_ms": 10, "overhead_p99_ms": 100, "proxy_ratio": 1.0, "submit_p99_ms": 20,
        "pickup_p99_ms": 100, "cancel_p99_ms": 1500},
    25: {"submit_p50_ms": 60, "overhead_p50_ms": 150, "list_page_ms": 100, "metrics_ms": 150, "sweep_runs": 3,
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


# --- side by side: straight to the double, through comfy-api-proxy, through us -------------------------

POLL_S = 0.005  # every client polls its status route this often (issue 21's measurement)
_ENDED = {"completed", "failed", "cancelled", "succeeded", "canceled"}


class KeepAlive:
    """One client's kept-alive HTTP connection (as an SDK's session keeps one), JSON in and out."""

    def __init__(self, base: str) -> None:
        import http.client
        import urllib.parse

        parts = urllib.parse.urlsplit(base)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import http.client

        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn.close()  # the server closed an idle connection (uvicorn after 5 s): a fresh one
                if attempt == 2:
                    raise
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None

    def close(self) -> None:
        self._conn.close()


class Leg:
    """One way of running a workflow: submit it, then poll its status route every POLL_S until it ends."""

    def __init__(self, name: str, base: str, submit_path: str, status_path: str,
                 body: Callable[[dict[str, Any]], dict[str, Any]], job_id: Callable[[Any], str],
                 ended: Callable[[Any, str], bool]) -> None:
        self.name, self.client = name, KeepAlive(base)
        self._submit_path, self._status_path, self._body, self._job_id, self._ended = (
            submit_path, status_path, body, job_id, ended)
        self.totals: list[float] = []
        self.submits: list[float] = []
        self.ids: list[str] = []
        self.spans: list[tuple[float, float]] = []  # (submitted, seen ended), epoch seconds as ComfyUI stamps them

    def run(self, wf: dict[str, Any]) -> None:
        began, started = time.time(), time.monotonic()
        status, answer = self.client.call("POST", self._submit_path, self._body(wf))
        if status not in (200, 201, 202):
            raise RuntimeError(f"{self.name}: submit answered {status}: {answer}")
        self.submits.append(time.monotonic() - started)
        job_id = self._job_id(answer)
        while True:
            status, answer = self.client.call("GET", self._status_path.format(id=job_id))
            if status == 200 and self._ended(answer, job_id):
                break
            time.sleep(POLL_S)
        self.totals.append(time.monotonic() - started)
        self.ids.append(job_id)
        self.spans.append((began, began + self.totals[-1]))


def direct_leg(base: str) -> Leg:
    """Straight to ComfyUI: POST /prompt, then GET /history/{id} until it has the prompt."""
    return Leg("direct", base, "/prompt", "/history/{id}", lambda wf: {"prompt": wf, "client_id": "bench"},
               lambda a: a["prompt_id"], lambda a, job_id: job_id in (a or {}))


def v2_leg(name: str, base: str) -> Leg:
    """The Comfy API v2: POST /api/v2/jobs, then GET /api/v2/jobs/{id} until it has ended."""
    return Leg(name, base, "/api/v2/jobs", "/api/v2/jobs/{id}", lambda wf: {"workflow": wf},
               lambda a: a["id"], lambda a, _: a.get("status") in _ENDED)


def v1_leg(base: str) -> Leg:
    """Our own API: POST /v1/jobs, then GET /v1/jobs/{id} until it has ended."""
    return Leg("v1", base, "/v1/jobs", "/v1/jobs/{id}", lambda wf: {"workflow": wf}, lambda a: a["id"],
               lambda a, _: a.get("status") in _ENDED)


def start_double(root: Path, exec_s: float) -> ComfyProcess:
    """The ComfyUI double every leg shares, with its folders laid out as a ComfyUI base directory."""
    proc = ComfyProcess(DOUBLE_DIR, free_port(), ["--output-directory", str(root / "output"),
                                                  "--input-directory", str(root / "input"),
                                                  "--temp-directory", str(root),
                                                  "--double-exec-delay", str(exec_s)])
    proc.start()
    return proc


def start_proxy(comfy_url: str) -> tuple[subprocess.Popen, str]:
    """comfy-api-proxy (the reference v2 proxy, a pinned dev dependency) in front of `comfy_url`."""
    port = free_port()
    exe = Path(sys.executable).parent / "comfy-api-proxy"
    proc = subprocess.Popen([str(exe), "run", "--comfyui", comfy_url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base + "/api/v2/health"), 30, 0.05)
    return proc, base


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Served:
    """`comfy-saas serve` in its own process (API, one worker, sweeper), as a user runs it and as the proxy runs,
    in front of a ComfyUI already running at `comfy_url` whose folders are under `comfy_base_dir`."""

    def __init__(self, data_dir: Path, rpc_ms: float, comfy_url: str, comfy_base_dir: Path) -> None:
        port = free_port()
        self.data_dir = data_dir
        self.rpc_ms = rpc_ms
        env = {"PATH": "/usr/bin:/bin", "COMFY_DATA_DIR": str(data_dir), "COMFY_URL_SIGNING_SECRET": "bench",
               "COMFY_COMFYUI_BASE_DIR": str(comfy_base_dir), "COMFY_HEARTBEAT_INTERVAL_S": "5",
               "COMFY_TWIN_PROFILE": "modal" if rpc_ms else "local", "COMFY_TWIN_RPC_MS": str(rpc_ms)}
        exe = Path(sys.executable).parent / "comfy-saas"
        self.proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--comfyui-url", comfy_url],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.close)  # a script that dies before its close() leaves no server behind
        self.base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: self.proc.poll() is not None or _answers(self.base + "/health"), 60, 0.05)
        except BaseException:
            self.close()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError("comfy-saas serve did not start")

    def jobs(self, ids: list[str]) -> list[Any]:
        """The jobs as stored (read straight from its data directory, without the profile's latency)."""
        return local_services(settings_for(self.data_dir, 0)).store.get_many(ids)

    def close(self) -> None:
        """Stop the server (again: a no-op)."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def has_v2(base: str) -> bool:
    """Whether our server mounts the Comfy API v2 (its job list answers; a server without it has no such route)."""
    try:
        with urllib.request.urlopen(base + "/api/v2/jobs?limit=1", timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    except OSError:
        return False


@dataclass(frozen=True)
class RealComfy:
    """A ComfyUI already running (e.g. `python main.py --cpu`), its folders under base_dir, and the size of the
    image its workflow blurs (the real ComfyUI's stand-in for the double's delay)."""

    url: str
    base_dir: Path
    blur_size: int = 1280


def blurred(color: int, size: int) -> dict[str, Any]:
    """A workflow a real ComfyUI runs without models: an image, blurred (most of the time), saved."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                         "color": color}},
            "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 5.0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}}}


def side_by_side(exec_s: float, runs: int, tmp: Path, rpc_ms: float, real: RealComfy | None = None
                 ) -> dict[str, Any]:
    """The same workflows, interleaved, on one ComfyUI (the double, or `real`): straight to it, through
    comfy-api-proxy and through our /v1 (and /api/v2 when mounted), every client polling its status route
    every POLL_S. Per leg: p50/p99 end to end, overhead over direct, submit; ours also as a ratio to the
    proxy's end to end."""
    root = real.base_dir if real else (tmp / "shared-comfy").resolve()
    wf = (lambda color: blurred(color, real.blur_size)) if real else workflow
    with contextlib.ExitStack() as started:  # whatever fails to start, what did start is stopped
        double = None if real else start_double(root, exec_s)
        if double is not None:
            started.callback(double.stop)
        comfy_url = real.url if real else double.url
        proxy, proxy_base = start_proxy(comfy_url)
        started.callback(lambda: (proxy.terminate(), proxy.wait(10)))
        stack = Served(tmp / "side", rpc_ms, comfy_url, root)
        started.callback(stack.close)
        legs = [direct_leg(comfy_url), v2_leg("proxy", proxy_base), v1_leg(stack.base)]
        if has_v2(stack.base):
            legs.append(v2_leg("v2", stack.base))
        for leg in legs:
            started.callback(leg.client.close)
        for leg_no, leg in enumerate(legs):  # one warm-up each (connections, first-job paths), not measured
            leg.run(wf(90_000 + leg_no))
            leg.totals, leg.submits, leg.ids, leg.spans = [], [], [], []
        for i in range(runs):
            for leg_no, leg in enumerate(legs):
                leg.run(wf(10_000 * (leg_no + 1) + i))  # no two prompts alike: ComfyUI would cache them
        return side_by_side_result(legs, stack, comfy_history(comfy_url))


def comfy_history(comfy_url: str) -> dict[str, Any]:
    """ComfyUI's history of every prompt the legs ran (each entry's status messages carry ComfyUI's own times)."""
    with urllib.request.urlopen(comfy_url + "/history?max_items=100000", timeout=30) as resp:
        return json.loads(resp.read())


def front_and_back(leg: Leg, history: dict[str, Any]) -> dict[str, float]:
    """Median ms from the submit to ComfyUI starting the prompt (front) and from ComfyUI's execution_success to
    the client seeing the end (back): where a leg's overhead lies. A prompt's id is the job's, or ours with the
    attempt after it."""
    front, back = [], []
    for job_id, (sent, seen) in zip(leg.ids, leg.spans, strict=True):
        entry = history.get(job_id) or history.get(f"{job_id}-1") or {}
        messages = {m[0]: m[1] for m in (entry.get("status") or {}).get("messages") or []}
        if "execution_start" in messages and "execution_success" in messages:
            front.append(messages["execution_start"]["timestamp"] / 1000 - sent)
            back.append(seen - messages["execution_success"]["timestamp"] / 1000)
    return {"front_p50_ms": ms(statistics.median(front)), "back_p50_ms": ms(statistics.median(back))} if front else {}


def side_by_side_result(legs: list[Leg], stack: Served, history: dict[str, Any]) -> dict[str, Any]:
    direct = statistics.median(legs[0].totals)
    out: dict[str, Any] = {}
    for leg in legs:
        overhead = [t - direct for t in leg.totals]
        out[leg.name] = {"p50_ms": ms(statistics.median(leg.totals)), "p99_ms": ms(pct(leg.totals, 99)),
                         "overhead_p50_ms": ms(statistics.median(overhead)), "overhead_p99_ms": ms(pct(overhead, 99)),
                         "submit_p50_ms": ms(statistics.median(leg.submits)), "submit_p99_ms": ms(pct(leg.submits, 99)),
                         **front_and_back(leg, history)}
    proxy = statistics.median(legs[1].totals)
    for leg in legs[2:]:
        out[leg.name]["ratio_to_proxy"] = round(statistics.median(leg.totals) / proxy, 4)
        out[leg.name].update(phases(stack, leg.ids))
    return out


def phases(stack: Served, ids: list[str]) -> dict[str, Any]:
    """Pickup p50/p99 and the median of each timing phase over these jobs (the phases add up to the total)."""
    timings = [j.timings for j in stack.jobs(ids) if j is not None and j.timings is not None]
    if not timings:
        return {}
    names = ("queue_wait_ms", "prepare_ms", "execute_ms", "upload_ms", "finish_ms", "total_ms")
    pickups = [t.queue_wait_ms for t in timings]
    return {"pickup_p50_ms": round(statistics.median(pickups), 1), "pickup_p99_ms": round(pct(pickups, 99), 1),
            "phases_p50_ms": {n: round(statistics.median(getattr(t, n) for t in timings), 1) for n in names}}


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


def run(quick: bool, rpc_ms: float, only_side: bool = False, runs: int | None = None,
        exec_s: float | None = None, real: RealComfy | None = None) -> dict[str, Any]:
    exec_s = exec_s if exec_s is not None else (0.5 if quick else 2.0)
    runs = runs or (8 if quick else 20)
    stored, active = (20_000, 2_000) if quick else (100_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        side = side_by_side(exec_s, runs, tmp, rpc_ms, real)
        v1 = side["v1"]
        result = {
            "quick": quick, "rpc_ms": rpc_ms, "twin_profile": "modal" if rpc_ms else "local",
            "workflow_exec_s": None if real else exec_s, "runs": runs,
            "comfyui": f"real ComfyUI at {real.url}, blurring {real.blur_size}px" if real else "the double",
            "poll_ms": POLL_S * 1000, "side_by_side": side,
            "baseline_p50_ms": side["direct"]["p50_ms"], "stack_p50_ms": v1["p50_ms"],
            "overhead_p50_ms": v1["overhead_p50_ms"], "overhead_p99_ms": v1["overhead_p99_ms"],
            "overhead_ratio": round(v1["p50_ms"] / side["direct"]["p50_ms"], 4),
            "proxy_overhead_p50_ms": side["proxy"]["overhead_p50_ms"], "proxy_ratio": v1["ratio_to_proxy"],
            "pickup_p50_ms": v1.get("pickup_p50_ms"), "pickup_p99_ms": v1.get("pickup_p99_ms"),
            "side_submit_p50_ms": v1["submit_p50_ms"],
        }
        if only_side:  # submit as the full run measures it (to a pool nobody serves), fewer times
            submits = submit_latency(100 if quick else 200, tmp, rpc_ms)
            result.update(submit_p50_ms=ms(statistics.median(submits)), submit_p99_ms=ms(pct(submits, 99)))
        else:
            result.update(the_rest(quick, tmp, rpc_ms, stored, active))
        result["goals_met"] = goals_met(result)
        return result


def the_rest(quick: bool, tmp: Path, rpc_ms: float, stored: int, active: int) -> dict[str, Any]:
    """Everything but the side-by-side: submit and cancel latency, drains, the store at scale, round trips."""
    submits = submit_latency(100 if quick else 1000, tmp, rpc_ms)
    cancels = cancel_latency(4 if quick else 20, tmp, rpc_ms)
    drain_jobs = 60 if quick else 1000
    drain = {str(w): drain_rate(drain_jobs, w, tmp, rpc_ms) for w in (1, 2, 4)}
    metrics_svc = local_services(settings_for(tmp / "submit", rpc_ms))  # a store 1,000 jobs have moved in
    scrape = [_timed(lambda: metrics.render(metrics_svc)) for _ in range(10)]
    return {
        "submit_p50_ms": ms(statistics.median(submits)), "submit_p99_ms": ms(pct(submits, 99)),
        "cancel_p50_ms": ms(statistics.median(cancels)), "cancel_p99_ms": ms(pct(cancels, 99)),
        "drain_jobs": drain_jobs, "drain_jobs_per_s": drain,
        "metrics_ms": ms(statistics.median(scrape)),
        **store_at_scale(tmp, rpc_ms, stored, active),
        "round_trips": round_trips(tmp, rpc_ms or 25.0, 3 if quick else 5),
        "worker_rss_mb": worker_rss_mb(10 if quick else 50, tmp),
    }


def goals_met(result: dict[str, Any]) -> dict[str, bool]:
    """Each goal for this latency: met or not (ratios and times at most the goal)."""
    goals = GOALS.get(result["rpc_ms"], {})
    return {k: result[k] <= goal for k, goal in goals.items() if result.get(k) is not None}


def table(result: dict[str, Any]) -> str:
    goals = GOALS.get(result["rpc_ms"], {})
    keys_shown = ("baseline_p50_ms", "stack_p50_ms", "overhead_p50_ms", "overhead_p99_ms", "overhead_ratio",
                  "proxy_overhead_p50_ms", "proxy_ratio", "side_submit_p50_ms", "submit_p50_ms", "submit_p99_ms",
                  "pickup_p50_ms", "pickup_p99_ms", "cancel_p50_ms", "cancel_p99_ms", "list_page_ms", "metrics_ms",
                  "sweep_10k_s", "sweep_runs", "sweep_run_max_s", "drain_jobs_per_s", "worker_rss_mb")
    lines = [f"rpc_ms={result['rpc_ms']} ({result['twin_profile']} profile)", f"{'metric':<22} {'measured':>28}  goal"]
    lines += [f"{k:<22} {json.dumps(result[k]):>28}  {goals.get(k, '')}" for k in keys_shown if k in result]
    lines.append(f"side by side on {result['comfyui']} ({result['runs']} interleaved runs, workflow "
                 f"{result['workflow_exec_s']} s, polling every {result['poll_ms']:g} ms):")
    for leg, row in result["side_by_side"].items():
        lines.append(f"  {leg:<7} p50 {row['p50_ms']:>8} p99 {row['p99_ms']:>8}"
                     f"  overhead p50 {row['overhead_p50_ms']:>6} p99 {row['overhead_p99_ms']:>6}"
                     f"  submit p50 {row['submit_p50_ms']:>5}"
                     + (f"  front {row['front_p50_ms']} back {row['back_p50_ms']}" if "front_p50_ms" in row else "")
                     + (f"  ratio to proxy {row['ratio_to_proxy']}" if "ratio_to_proxy" in row else ""))
        if "phases_p50_ms" in row:
            lines.append("          phases p50: " + ", ".join(f"{k} {v}" for k, v in row["phases_p50_ms"].items()))
    if "round_trips" in result:
        lines.append("round trips: " + ", ".join(f"{k} {v}" for k, v in result["round_trips"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs and smaller stores")
    parser.add_argument("--rpc-ms", type=float, default=0.0,
                        help="latency added to every Dict/Queue call (the twins' Modal profile); 0: local twins")
    parser.add_argument("--side-by-side", action="store_true",
                        help="only the side-by-side run (direct, comfy-api-proxy, us), a few minutes")
    parser.add_argument("--runs", type=int, help="interleaved side-by-side runs per leg")
    parser.add_argument("--exec-s", type=float, help="seconds the double takes per prompt")
    parser.add_argument("--comfyui-url", help="side by side on this running ComfyUI instead of the double")
    parser.add_argument("--comfyui-base-dir", type=Path, help="with --comfyui-url: its base directory here")
    parser.add_argument("--blur-size", type=int, default=1280, help="with --comfyui-url: the blurred image's side")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    real = RealComfy(args.comfyui_url, args.comfyui_base_dir.resolve(), args.blur_size) if args.comfyui_url else None
    result = run(args.quick, args.rpc_ms, args.side_by_side, args.runs, args.exec_s, real)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    missed = [k for k, ok in result["goals_met"].items() if not ok]
    print(f"took {result['bench_seconds']} s; JSON in {args.out}; goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
