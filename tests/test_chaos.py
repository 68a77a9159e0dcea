"""A small configuration of the chaos run (bench/chaos.py): faults injected, nothing lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_chaos_loses_nothing_and_doubles_nothing(tmp_path: Path):
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--jobs", "40", "--seed", "11", "--workers", "2",
           "--fault-interval", "0.15", "--deadline-s", "120", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    result = json.loads(out.read_text())
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert result["faults_injected"] > 0
    assert {k: result[k] for k in ("lost", "stuck", "duplicate_terminal", "duplicate_webhooks")} == {
        "lost": 0, "stuck": 0, "duplicate_terminal": 0, "duplicate_webhooks": 0}
    assert result["missing_webhooks"] == 0 and result["bad_signatures"] == 0
