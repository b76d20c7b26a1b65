"""The image benchmark harness runs (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("sklearn")  # the digits (lightning_vae[images])

CONFIG = "digits_delta_gaussian"


@pytest.mark.slow  # ~25 s: the default suite keeps bench_steps.py's smoke test (tests/test_benchmarks.py)
def test_bench_images_runs_and_prints_ratios(tmp_path):
    out = tmp_path / "bench.json"
    # 640 digits at batch 128: 5 steps an epoch, so 20 steps are 4 whole epochs; the default
    # column validates, checkpoints, scores the images and draws at the last one. Run from
    # tmp_path: anything written to a relative path (logs/) would land there.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_images.py"), "--config", CONFIG,
                           "--steps", "20", "--warmup", "5", "--n_train", "640", "--repeats", "1",
                           "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no logs/, nothing else
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["threads"] == 1 and report["precision"] == "32"
    rows = report["rows"]
    assert [(r["config"], r["device"], r["batch_size"], r["steps"], r["epochs"]) for r in rows] == \
        [(CONFIG, "cpu", 128, 20, 4)]
    printed = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(CONFIG)]
    assert len(printed) == len(rows)
    for r, line in zip(rows, printed):
        assert r["steps_per_batch"] == 32  # nothing passed: the CLI's default K
        for column in ("hand", "bare", "default"):
            assert r[column] > 0 and r["runs"][column] == [r[column]]  # one repeat: the best is it
            peak = r["peak_mb"][column]
            assert peak is None or (peak > 0 and r["peak_runs_mb"][column] == [peak])
        # The ratios are the quotients of the unrounded rates (the same floats, exactly) ...
        assert r["bare_over_hand"] == r["bare"] / r["hand"]
        assert r["default_over_hand"] == r["default"] / r["hand"]
        # ... and the table prints exactly those numbers, rounded.
        mb = ["-" if r["peak_mb"][c] is None else f"{r['peak_mb'][c]:.0f}" for c in ("hand", "bare", "default")]
        assert line == [r["config"], r["device"], str(r["batch_size"]), str(r["steps"]), f"{r['hand']:.0f}",
                        f"{r['bare']:.0f}", f"{r['bare_over_hand']:.2f}", f"{r['default']:.0f}",
                        f"{r['default_over_hand']:.2f}", *mb]
    assert f"{report['max_rss_mb']:.0f} MB" in proc.stdout.splitlines()[-1]
