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
        # The printed ratio is fit / hand of the unrounded rates: the integers printed beside it
        # are rounded to +-0.5, so their quotient can differ from it by that much, relatively.
        slack = ratio * (0.5 / fit + 0.5 / hand) + 0.005
        assert abs(ratio - fit / hand) <= slack


def test_bench_metrics_runs_and_prints_the_total():
    proc = subprocess.run([sys.executable, "benchmarks/bench_metrics.py", "--n", "500", "--repeats", "1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {ln[:20].strip(): ln[20:].split() for ln in proc.stdout.splitlines()[2:-1]}
    assert set(rows) == {"MMD", "energy", "sliced W2", "marginal W1", "MMD, all points", "energy, all points"}
    # 500 points is under the 2,000-point subsample: the subsampled and full MMD agree.
    assert rows["MMD"][0] == "500" and float(rows["MMD"][2]) == float(rows["MMD, all points"][2])
    default = sum(float(rows[k][1]) for k in ("MMD", "energy", "sliced W2"))
    total = float(proc.stdout.splitlines()[-1].split(": ")[1].split(" s")[0])
    assert abs(total - default) <= 0.002  # the printed total is the sum of its three rows (3 decimals)
