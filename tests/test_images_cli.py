"""Every image config, tiny, through the real CLI: a finite loss, the image scores and
figures, and the feature network's hash next to every score; and 2-process DDP on the CPU
trains the one-process run of an image model."""

from __future__ import annotations

import json
import math

import pytest

from conftest import CONFIGS, IMAGE_CONFIGS, run_dirs
from lightning_vae.runs import read_scalars

TINY_IMAGES = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.n_train=128",
    "--data.n_val=64",
    "--data.n_test=32",
    "--data.batch_size=32",
    "--data.eval_batch_size=64",
    "--model.network.init_args.width=4",
    "--sample_quality.n_samples=64",
    "--sample_figure.every_n_epochs=1",
    "--sample_figure.n_points=64",
    "--image_quality.every_n_epochs=1",
    "--image_quality.n_samples=64",
    "--image_quality.grid=16",
    "--image_quality.feature_steps=30",
    "--eval_every_n_steps=0",
    "--trainer.log_every_n_steps=1",
]


def _fit(config: str, root, *extra: str):
    from lightning_vae.cli import main

    name = config.removesuffix(".yaml")
    main(["fit", "--config", str(CONFIGS / config), *TINY_IMAGES, f"--trainer.logger.init_args.save_dir={root}",
          f"--trainer.default_root_dir={root}", *extra])
    (run,) = run_dirs(root, name)
    return run


def test_there_are_image_configs_for_both_data_sets():
    assert {"fading_elbo.yaml", "fading_delta_gaussian.yaml", "fading_delta_laplace.yaml", "digits_vae.yaml",
            "digits_delta_gaussian.yaml", "digits_delta_laplace.yaml"} <= set(IMAGE_CONFIGS)
    for config in IMAGE_CONFIGS:  # the first line says what the config shows
        first = (CONFIGS / config).read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 40, config


# The digits' learned spreads: the same kernels train at image scale in fading_learned_spread
# here and in tests/test_transform_spread.py (the slow suite trains them too).
SLOW_IMAGE = {"digits_learned_spread.yaml", "digits_transform_spread.yaml"}


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_IMAGE else c
                                    for c in IMAGE_CONFIGS])
def test_every_image_config_trains(config, tmp_path, monkeypatch):
    monkeypatch.setenv("LVAE_CACHE_DIR", str(tmp_path / "cache"))  # no state from the machine
    run = _fit(config, tmp_path)
    s = read_scalars(run)
    assert math.isfinite(s["train/loss"][-1][1])
    for tag in ("images/fd", "images/kid", "images/precision", "images/recall", "images/sharpness"):
        assert tag in s and math.isfinite(s[tag][-1][1]), tag
    procedural = config.startswith(("fading_", "sprites_"))
    assert ("images/dist_mean" in s) == procedural and ("images/coverage" in s) == procedural
    rows = [json.loads(line) for line in (run / "image_quality.jsonl").read_text().splitlines()]
    assert rows and all(len(r["feature_net_sha256"]) == 64 for r in rows)
    figures = {p.name.split("_step")[0] for p in (run / "figures").glob("*.png")}
    assert {"images_samples", "images_reconstructions", "images_interpolations"} <= figures
    # The feature network was trained once, into the cache the test gave it.
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1


def test_the_warm_start_is_logged_and_ends_after_its_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("LVAE_CACHE_DIR", str(tmp_path / "cache"))
    run = _fit("fading_delta_gaussian.yaml", tmp_path, "--model.objective.init_args.steps=3",
               "--data.steps_per_batch=1", "--image_quality.scores=false")
    warm = dict(read_scalars(run)["train/warm_start"])
    assert warm[0] == 1.0 and warm[2] == 1.0 and warm[3] == 0.0 and warm[max(warm)] == 0.0


# ~25 s: the slow suite's, with the point-cloud DDP runs (tests/test_model_ddp.py); the default
# suite's multi-process check is tests/test_metrics_ddp.py.
@pytest.mark.slow
def test_two_cpu_processes_train_the_one_process_run_of_an_image_model(tmp_path, monkeypatch):
    """The digits delta-VAE (convolutional, Gaussian latent, warm start then Laplace spread):
    2 gloo processes at batch 32 each give the epoch metrics of one process at batch 64."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LVAE_CACHE_DIR": str(tmp_path / "cache")}

    def fit(name: str, batch: int, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "lightning_vae", "fit", "--config", str(CONFIGS / "digits_delta_laplace.yaml"),
               *TINY_IMAGES, "--data.n_train=256", f"--data.batch_size={batch}", "--model.objective.init_args.steps=2",
               f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.logger.init_args.name={name}",
               f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=2",
               "--sample_quality.every_n_epochs=1", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)

    one = fit("one", 64)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = fit("ddp", 32, "--config", str(CONFIGS / "trainer" / "ddp_cpu2.yaml"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (ref,) = run_dirs(tmp_path, "one")
    (run,) = run_dirs(tmp_path, "ddp")
    a, b = read_scalars(ref), read_scalars(run)
    tags = [t for t in a if t.startswith(("val/", "images/"))]
    assert {"val/loss", "images/fd", "images/kid", "images/sharpness"} <= set(tags)
    for tag in tags:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        for (_, va), (_, vb) in zip(a[tag], b[tag]):
            # Rounding of the all-reduced gradients (~1e-7) carried through 8 Adam steps.
            assert math.isclose(va, vb, rel_tol=1e-3, abs_tol=1e-4), (tag, va, vb)


@pytest.mark.parametrize("config,arg,expected", [
    ("digits_vae.yaml", "--model.network.init_args.depth=4",
     "model.network.init_args.depth must be <= 3 for a 8x8 image"),
    ("seed_spread.yaml", "--model.network=lightning_vae.nets.ConvNet", "model.network: ConvNet needs image data"),
])
def test_a_network_that_does_not_fit_the_data_is_one_line(config, arg, expected, tmp_path, capsys):
    from lightning_vae.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIGS / config), arg, f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert not any(tmp_path.rglob("version_*"))  # nothing written
