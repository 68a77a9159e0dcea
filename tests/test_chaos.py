"""A small configuration of the chaos run (bench/chaos.py): faults injected, nothing lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("jobs", "rpc_ms", "fault_s"), [(40, 0, 0.15), (20, 25, 0.6)],
                         ids=["local-profile", "modal-profile"])
def test_chaos_loses_nothing_and_doubles_nothing(tmp_path: Path, jobs: int, rpc_ms: int, fault_s: float):
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--jobs", str(jobs), "--seed", "11", "--workers", "2",
           "--fault-interval", str(fault_s), "--deadline-s", "120", "--rpc-ms", str(rpc_ms), "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    result = json.loads(out.read_text())
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert result["faults_injected"] > 0
    assert {k: result[k] for k in ("lost", "stuck", "duplicate_terminal", "duplicate_webhooks")} == {
        "lost": 0, "stuck": 0, "duplicate_terminal": 0, "duplicate_webhooks": 0}
    assert result["missing_webhooks"] == 0 and result["bad_signatures"] == 0
    assert result["processes_left_running"] == 0
