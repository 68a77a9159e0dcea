"""Chaos run: N jobs through the local stack while workers are killed, ComfyUI crashes and sockets drop.

    python bench/chaos.py --jobs 1000 --seed 7 --out chaos.json
    python bench/chaos.py --jobs 1000 --seed 7 --rpc-ms 25 --out chaos.json   # on the twins' Modal profile

Worker processes (`comfy-saas worker`) each drive their own ComfyUI double; a supervisor restarts
whatever dies. At the end it counts jobs lost (no record), stuck (not finished by the deadline),
with a duplicate terminal outcome (status changed after it was final), and with duplicate webhooks
(the receiver always answers 200, so any second delivery is a bug). All four must be zero.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from comfy_saas import signing
from comfy_saas.config import Settings
from comfy_saas.jobs import ops, sweeper, webhooks
from comfy_saas.jobs.request import JobRequest
from comfy_saas.jobs.services import local_services
from comfy_saas.local import free_port
from comfy_saas.runner.comfy_process import DOUBLE_DIR, ComfyProcess

ROOT = Path(__file__).resolve().parent.parent

SECRET = "whsec_" + base64.b64encode(b"chaos-webhook-secret").decode()
QUICK = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "chaos"}}}
SLOW = {**QUICK, "3": {"class_type": "SlowPassthrough", "inputs": {
    "image": ["1", 0], "steps": 4, "delay": 0.05, "send_preview": False, "send_text": False, "seed": 0}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "chaos_slow"}}}


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.deliveries: Counter = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            if not signing.verify(SECRET, dict(self.headers), body):
                self.server.bad_signatures += 1
            self.server.deliveries[json.loads(body)["data"]["id"]] += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Slot:
    """One worker process and the ComfyUI double it drives."""

    double: ComfyProcess
    proc: subprocess.Popen | None = None
    starts: int = 0


class Chaos:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.env = {**os.environ, "COMFY_DATA_DIR": str(data_dir), "COMFY_HEARTBEAT_INTERVAL_S": "0.3",
                    "COMFY_HEARTBEAT_STALE_S": "2", "COMFY_MAX_ATTEMPTS": "50", "COMFY_CANCEL_POLL_S": "0.2",
                    "COMFY_WEBHOOK_SECRET": SECRET, "COMFY_WEBHOOK_BACKOFF_S": "0.2",
                    "COMFY_PRIVATE_URL_ALLOWLIST": "127.0.0.1/32", "COMFY_URL_SIGNING_SECRET": "chaos",
                    "COMFY_WEBHOOK_TIMEOUT_S": "10"}
        if args.rpc_ms:
            self.env.update({"COMFY_TWIN_PROFILE": "modal", "COMFY_TWIN_RPC_MS": str(args.rpc_ms)})
        self.settings = Settings.from_env(self.env)
        self.svc = local_services(self.settings)
        self.slots: list[Slot] = []
        self.faults: Counter = Counter()
        self.stop = threading.Event()
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen] = []  # every worker ever started, to prove none outlives the run
        self._starting = threading.Lock()

    def start_worker(self, slot: Slot) -> None:
        cmd = [sys.executable, "-m", "comfy_saas.cli", "worker", "--comfyui-url", slot.double.url]
        with self._starting:  # the supervisor must not start a worker after shutdown has passed its slot
            if self.stop.is_set():
                return
            slot.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            self.procs.append(slot.proc)
            slot.starts += 1

    def start(self) -> None:
        for i in range(self.args.workers):
            root = self.data_dir / f"comfy/{i}"
            args = ["--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
                    "--temp-directory", str(root)]
            double = ComfyProcess(DOUBLE_DIR, free_port(), args, log_path=root / "comfyui.log")
            root.mkdir(parents=True, exist_ok=True)
            double.start()
            slot = Slot(double)
            self.start_worker(slot)
            self.slots.append(slot)
        for target in (self.supervise, self.sweep, self.dispatch, self.inject):
            threading.Thread(target=target, daemon=True).start()

    def supervise(self) -> None:
        while not self.stop.wait(0.1):
            for slot in self.slots:
                if not slot.double.alive():
                    try:
                        self._restart_double(slot)
                    except Exception:
                        continue
                if slot.proc is None or slot.proc.poll() is not None:
                    self.start_worker(slot)

    def _restart_double(self, slot: Slot) -> None:
        with self._starting:  # nor a ComfyUI that shutdown has already stopped
            if not self.stop.is_set():
                slot.double.restart(30)

    def sweep(self) -> None:
        while not self.stop.wait(0.5):
            try:
                sweeper.sweep(self.svc, owner="chaos-sweeper")
            except Exception as exc:  # a failed pass is retried on the next tick, as on Modal
                print(f"sweep failed: {exc!r}", file=sys.stderr)

    def dispatch(self) -> None:
        while not self.stop.wait(0.2):
            try:
                webhooks.dispatch(self.svc, owner="chaos-dispatcher")
            except Exception as exc:
                print(f"dispatch failed: {exc!r}", file=sys.stderr)

    def inject(self) -> None:
        while not self.stop.wait(self.rng.expovariate(1 / self.args.fault_interval)):
            slot = self.rng.choice(self.slots)
            fault = self.rng.choice(["kill_worker", "crash_comfyui", "drop_websocket"])
            try:
                if fault == "kill_worker" and slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.send_signal(signal.SIGKILL)
                elif fault == "crash_comfyui":
                    _post(slot.double.url + "/double/crash")
                elif fault == "drop_websocket":
                    _post(slot.double.url + "/double/drop_ws")
                self.faults[fault] += 1
            except OSError:
                pass  # it was already down; the supervisor is on it

    def shutdown(self) -> None:
        with self._starting:
            self.stop.set()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.terminate()
                try:
                    slot.proc.wait(10)
                except subprocess.TimeoutExpired:
                    slot.proc.kill()
            slot.double.stop()


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=2).read()


def run(args: argparse.Namespace) -> dict:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        chaos = Chaos(args, Path(tmp))
        chaos.start()
        rng = random.Random(args.seed + 1)
        ids = [submit(chaos, SLOW if rng.random() < 0.3 else QUICK, hook) for _ in range(args.jobs)]
        started = time.monotonic()
        first_final: dict[str, str] = {}
        changed: set[str] = set()
        while time.monotonic() - started < args.deadline_s:
            _observe(chaos, ids, first_final, changed)
            delivered = all(receiver.deliveries[i] >= 1 for i in ids)
            if len(first_final) == len(ids) and delivered:
                _observe(chaos, ids, first_final, changed, every=True)
                break
            time.sleep(1.0)
        time.sleep(1.0)  # let a late duplicate show itself
        _observe(chaos, ids, first_final, changed, every=True)
        chaos.shutdown()
        left_running = sum(p.poll() is None for p in chaos.procs) + sum(s.double.alive() for s in chaos.slots)
        records = {i: chaos.svc.store.get(i) for i in ids}
        stuck_details = [ops.inspect(chaos.svc, i) for i, j in records.items() if j is not None and not j.terminal]
        deliveries = {i: chaos.svc.store.webhook(i) or {"attempts": []} for i in ids}
    receiver.shutdown()
    # A retry after a recorded failed attempt (the receiver was too slow to answer) is the receiver's
    # error, not a duplicate; a second receipt with no failure recorded would be one.
    retried = {i for i, d in deliveries.items() if any(a["status_code"] != 200 for a in d["attempts"])}
    statuses = Counter(j.status.value for j in records.values() if j is not None)
    return {
        "jobs": len(ids),
        "lost": sum(1 for j in records.values() if j is None),
        "stuck": sum(1 for j in records.values() if j is not None and not j.terminal),
        "duplicate_terminal": len(changed),
        "duplicate_webhooks": sum(1 for i in ids if receiver.deliveries[i] > 1 and i not in retried),
        "webhook_retries_after_receiver_errors": len(retried),
        "missing_webhooks": sum(1 for i in ids if receiver.deliveries[i] == 0),
        "bad_signatures": receiver.bad_signatures,
        "processes_left_running": left_running,
        "faults_injected": sum(chaos.faults.values()),
        "faults": dict(chaos.faults),
        "statuses": dict(statuses),
        "failure_reasons": dict(Counter(f"{j.error.type}: {j.error.message[:80]}" for j in records.values()
                                        if j is not None and j.status.value == "failed" and j.error)),
        "seconds": round(time.monotonic() - started, 1),
        "rpc_ms": args.rpc_ms,
        "stuck_jobs": stuck_details,
    }


def submit(chaos: Chaos, workflow: dict, hook: str) -> str:
    request = JobRequest(workflow=workflow, webhook_url=hook)
    return chaos.svc.lifecycle.create(request, {"workflow": workflow})[0].id


def _observe(chaos: Chaos, ids: list[str], first_final: dict[str, str], changed: set[str],
             every: bool = False) -> None:
    for job_id in ids if every else [i for i in ids if i not in first_final or i in changed]:
        job = chaos.svc.store.get(job_id)
        if job is None or not job.terminal:
            continue
        if job_id in first_final and first_final[job_id] != job.status.value:
            changed.add(job_id)
        first_final.setdefault(job_id, job.status.value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--fault-interval", type=float, default=0.5, help="mean seconds between faults")
    parser.add_argument("--deadline-s", type=float, default=600)
    parser.add_argument("--rpc-ms", type=float, default=0.0,
                        help="run the twins in their Modal profile with this latency per Dict/Queue call")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for key in ("jobs", "lost", "stuck", "duplicate_terminal", "duplicate_webhooks", "faults_injected", "seconds"):
        print(f"{key:>20}: {result[key]}")
    ok = not (result["lost"] or result["stuck"] or result["duplicate_terminal"] or result["duplicate_webhooks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
