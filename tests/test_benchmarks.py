"""The benchmark harness runs (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_steps_runs_and_prints_ratios(tmp_path):
    out = tmp_path / "bench.json"
    # 640 points at batch 64: 10 steps an epoch, so 20 steps are 2 whole epochs (the default
    # column validates, checkpoints, computes the quality metrics and draws in both).
    proc = subprocess.run([sys.executable, "benchmarks/bench_steps.py", "--steps", "20", "--warmup", "5",
                           "--batch_sizes", "64", "--n_train", "640", "--skip_wall", "--repeats", "1",
                           "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["objective"], r["batch_size"], r["steps"]) for r in rows] == [("elbo", 64, 20),
                                                                             ("spread", 64, 20)]
    printed = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("elbo", "spread"))]
    assert len(printed) == len(rows)
    for r, line in zip(rows, printed):
        assert r["steps_per_batch"] == 32  # nothing passed: the CLI's default K
        for column in ("hand", "bare", "default"):
            assert r[column] > 0 and r["runs"][column] == [r[column]]  # one repeat: the best is it
        # The ratios are the quotients of the unrounded rates (the same floats, exactly) ...
        assert r["bare_over_hand"] == r["bare"] / r["hand"]
        assert r["default_over_hand"] == r["default"] / r["hand"]
        # ... and the table prints exactly those numbers, rounded.
        assert line == [r["objective"], str(r["batch_size"]), str(r["steps"]), f"{r['hand']:.0f}",
                        f"{r['bare']:.0f}", f"{r['bare_over_hand']:.2f}", f"{r['default']:.0f}",
                        f"{r['default_over_hand']:.2f}"]


@pytest.mark.slow  # ~5 s; bench_steps' smoke test above covers the harness in the default suite
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
