"""The benchmark harness runs (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_steps_runs_and_prints_ratios():
    proc = subprocess.run([sys.executable, "benchmarks/bench_steps.py", "--steps", "40",
                           "--warmup", "10", "--batch_sizes", "64", "--skip_wall", "--repeats", "1",
                           "--steps_per_batch", "1", "8"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("elbo", "spread"))]
    assert [r[:2] for r in rows] == [["elbo", "64"], ["spread", "64"]]
    for r in rows:
        hand, fit, ratio = float(r[2]), float(r[3]), float(r[4])
        assert hand > 0 and fit > 0
        assert abs(ratio - fit / hand) < 0.01 + 0.01 * ratio  # the printed ratio is fit / hand
