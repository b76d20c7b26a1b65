"""End to end through the real CLI: configs, the failure, the fix, the clean divergence."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import CONFIGS, IMAGE_CONFIGS, ROOT, TINY, VAE_CONFIGS, fit, run_dirs
from lightning_vae.cli import build_cli
from lightning_vae.data import ManifoldDataModule
from lightning_vae.data.manifolds import TwoClusters
from lightning_vae.model import VAE
from lightning_vae.runs import read_scalars


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("config", VAE_CONFIGS)
def test_every_config_instantiates(config, tmp_path):
    cli = build_cli(["--config", str(CONFIGS / config), f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    assert isinstance(cli.model, VAE)
    assert isinstance(cli.datamodule, ManifoldDataModule)
    assert cli.model.hparams.data_dim == cli.datamodule.data_dim  # linked, not typed twice


# Variants whose code path a sibling config trains here already (the slow suite trains them).
SIBLING_COVERED = {"circle_hyper_delta.yaml": "sphere_hyper_delta.yaml",
                   "sphere_hyper_spread.yaml": "circle_hyper_spread.yaml",
                   "sphere_elbo.yaml": "circle_elbo.yaml", "sphere_spread.yaml": "circle_spread.yaml",
                   "circle_spread_embedded.yaml": "tests/test_embedding.py",
                   "circle_learned_spread.yaml": "seed_learned_spread.yaml",
                   "sphere_learned_spread.yaml": "seed_learned_spread.yaml",
                   "seed_learned_spread.yaml": "tests/test_learned_spread.py",
                   "delta_transform_spread.yaml": "tests/test_transform_spread.py"}


@pytest.mark.parametrize("config", [
    pytest.param(name, marks=pytest.mark.slow) if name in SIBLING_COVERED else name
    for name in VAE_CONFIGS
    if not name.startswith("seed_elbo") and name not in IMAGE_CONFIGS])
def test_every_config_trains(config, tmp_path):
    """Each experiment config runs end to end (tiny): a finite loss, sample quality logged,
    and the logger name the config gives."""
    name = config.removesuffix(".yaml")
    run = fit(config, tmp_path, "--trainer.max_epochs=1", "--sample_quality.every_n_epochs=1")
    assert run.parent.name == name
    s = read_scalars(run)
    assert math.isfinite(s["train/loss"][-1][1]) and "quality/mmd" in s


def test_elbo_collapses_and_loss_is_unbounded(runs):
    s = read_scalars(runs["elbo"])
    assert "decoder/collapse_step" in s
    collapse_step = s["decoder/collapse_step"][-1][1]
    assert 0 <= collapse_step < 300
    # y-std orders of magnitude below the data scale (1.0) and the cluster std (0.1)
    final_y = min(s["decoder/std_y_z0"][-1][1], s["decoder/std_y_z1"][-1][1])
    assert final_y < 1e-2
    # The loss goes below anything a model of the x-coordinate alone could reach.
    assert min(v for _, v in s["train/loss"]) < TwoClusters().line_entropy() - 1.0


def test_spread_does_not_collapse_and_loss_is_bounded(runs):
    s = read_scalars(runs["spread"])
    assert "decoder/collapse_step" not in s
    noise_std, dim = 0.3, 2
    # loss = -(rec - beta kl) >= -rec >= -D * max_y log N(y; y, noise_std^2)
    bound = -dim * (-0.5 * math.log(2 * math.pi * noise_std**2))
    losses = [v for _, v in s["train/loss"]]
    assert all(math.isfinite(v) for v in losses)
    assert min(losses) >= bound
    assert min(v for _, v in s["decoder/min_likelihood_std_ratio"]) >= noise_std
    assert "val/spread_log_px" in s and "val/log_px" in s


def test_run_directory_contents_and_tensorboard(runs):
    for kind in ("elbo", "spread"):
        run = runs[kind]
        for name in ("config.yaml", "hparams.yaml", "checkpoints/last.ckpt"):
            assert (run / name).exists(), f"{kind}: {name} missing"
        acc = _events(run)
        tags = acc.Tags()
        for tag in ("train/loss", "train/kl", "train/rec", "train/grad_norm", "val/log_px",
                    "decoder/std_x_z0", "decoder/std_y_z1", "decoder/loc_x_z0",
                    "quality/mmd", "quality/dist_mean", "quality/mode_imbalance",
                    "hp/val_log_px", "hp/collapse_step"):
            assert tag in tags["scalars"], f"{kind}: scalar {tag} missing"
        assert "decoder/log10_std_y" in tags["histograms"]
        assert "encoder/q_z1" in tags["histograms"]
        assert "samples/scatter" in tags["images"]
        assert "_hparams_/session_start_info" in acc.summary_metadata
    hp = read_scalars(runs["elbo"])["hp/collapse_step"][-1][1]
    assert hp >= 0
    assert read_scalars(runs["spread"])["hp/collapse_step"][-1][1] == -1


def test_checkpoint_round_trip_and_public_api(runs):
    model = VAE.load_from_checkpoint(runs["spread"] / "checkpoints" / "last.ckpt", map_location="cpu")
    x = model.sample(100, generator=torch.Generator().manual_seed(0))
    assert x.shape == (100, 2) and torch.isfinite(x).all()
    assert model.log_px(x).shape == (100,)
    assert isinstance(model.encode(x), torch.distributions.Bernoulli)
    assert isinstance(model.decode(torch.tensor([[0.0], [1.0]])), torch.distributions.Independent)
    assert "SpreadELBO" in repr(model.objective)


def test_validate_test_predict(runs, tmp_path):
    """Evaluations log into the checkpoint's run (<run>/<stage>/version_N) and say where;
    without a checkpoint under <name>/<stage>/: never as a new training run."""
    import shutil

    from lightning_vae.cli import main

    run = tmp_path / "seed_spread" / "version_0"
    shutil.copytree(runs["spread"], run, symlinks=True)  # the shared run stays as it is
    ckpt = run / "checkpoints" / "last.ckpt"
    common = ["--config", str(CONFIGS / "seed_spread.yaml"), *TINY[1:],
              f"--trainer.logger.init_args.save_dir={tmp_path}"]
    for sub in ("validate", "test", "predict"):
        main([sub, *common, f"--ckpt_path={ckpt}"])
    main(["test", *common])  # an untrained model
    assert run_dirs(tmp_path, "seed_spread") == [run]  # no new training-run version
    dirs = [run / sub / "version_0" for sub in ("validate", "test", "predict")]
    assert all((d / "config.yaml").exists() for d in dirs)
    assert "test/log_px" in read_scalars(dirs[1])
    assert "test/log_px" in read_scalars(tmp_path / "seed_spread" / "test" / "version_0")
    pred = torch.load(dirs[2] / "predictions.pt")
    assert pred["x"].shape == (500, 2) and pred["q_z"].shape == (500, 2)
    assert torch.allclose(pred["q_z"].sum(1), torch.ones(500))
    from lightning_vae.runs import find_runs

    assert find_runs(tmp_path) == [run]  # the report reads one training run


def test_runs_never_overwrite(tmp_path):
    a = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=1")
    b = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=1")
    assert a != b and a.exists() and b.exists()


def test_same_seed_same_numbers(tmp_path):
    a = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=2")
    b = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=2")
    c = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=2", "--seed_everything=1")
    la, lb, lc = (read_scalars(r)["train/loss"] for r in (a, b, c))
    assert la == lb
    assert la != lc


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lightning_vae", *args], capture_output=True,
                          text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_divergence_ends_cleanly(tmp_path):
    proc = _cli("fit", "--config", str(CONFIGS / "seed_elbo_diverge.yaml"), *TINY,
                f"--trainer.logger.init_args.save_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    diagnosis = [ln for ln in proc.stderr.splitlines() if "Training diverged at step" in ln]
    assert len(diagnosis) == 1
    assert "zero variance on axis y" in diagnosis[0]
    run = run_dirs(tmp_path, "seed_elbo_diverge")[-1]
    ckpt = run / "checkpoints" / "last-finite.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    # "Finite" means usable: the derived distributions too (the decoder std of every state,
    # samples, log p(x)), not only the stored weights.
    from lightning_vae.callbacks import unusable

    model = VAE.load_from_checkpoint(ckpt, map_location="cpu")
    assert unusable(model) is None
    loc, scale = model.decoder_params()
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert torch.isfinite(model.sample(1000)).all()
    data = ManifoldDataModule(n_train=256, n_val=256, n_test=256)
    data.setup()
    assert torch.isfinite(model.net.log_px(data.val_x)).all()
    s = read_scalars(run)
    assert s["hp/diverged"][-1][1] == 1.0
    assert len(s["train/loss"]) >= 1  # TensorBoard logs intact


def test_bad_input_is_one_line(tmp_path):
    proc = _cli("fit", "--config", str(CONFIGS / "seed_spread.yaml"),
                "--model.objective.init_args.noise_std=-1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "noise_std must be >= 0, got -1.0" in errors[0]
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


def test_print_config_shows_resolved_config(capsys):
    from lightning_vae.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: lightning_vae.objectives.SpreadELBO" in out
    assert "noise_std: 0.3" in out and "kl_warmup_steps: 500" in out
    # The effective classes of what the config leaves unset, not "latent: null".
    for cls in ("latents.BernoulliLatent", "nets.GaussianDecoder", "data.TwoClusters"):
        assert f"class_path: lightning_vae.{cls}" in out, cls
    assert "latent: null" not in out and "manifold: null" not in out


def test_report_summaries_tell_the_story(runs):
    from lightning_vae.reproduce import format_summary
    from lightning_vae.runs import recovered_both_modes, summarize

    elbo, spread = summarize(runs["elbo"]), summarize(runs["spread"])
    assert elbo["collapse_step"] is not None and spread["collapse_step"] is None
    assert elbo["max_grad_norm"] > spread["max_grad_norm"]
    assert set(spread["std"]["z0"]) == {"x", "y"}
    text = format_summary("FAILURE", "seed_elbo.yaml", elbo, 1.0, TwoClusters().line_entropy())
    assert f"yes, at step {elbo['collapse_step']}" in text
    assert "variance collapse  no" in format_summary("FIX", "s", spread, 1.0, -0.19)
    centres = TwoClusters().centres
    # The plain verdict: one broad Gaussian (both means near 0) is not "both modes", though
    # its samples split 50/50 between the clusters.
    from lightning_vae.reproduce import verdict

    broad = {**spread, "loc": {"z0": [-0.10, 0.0], "z1": [0.03, 0.0]}, "quality/mode_imbalance": 0.0,
             "collapse_step": 62}
    assert verdict(broad, centres) == ("both modes recovered: NO (no decoder mean within 0.25 of "
                                       "(-1.00, +0.00), (+1.00, +0.00)); variance collapsed: yes")
    good = {**spread, "loc": {"z0": [-1.0, 0.0], "z1": [1.0, 0.0]}, "quality/mode_imbalance": 0.001}
    assert verdict(good, centres) == "both modes recovered: yes; variance collapsed: no"
    assert "verdict            both modes" in format_summary("FIX", "s", good, 1.0, -0.19, centres)
    assert recovered_both_modes({**spread, "loc": {"z0": [-1.0, 0.0], "z1": [1.02, 0.0]},
                                 "quality/mode_imbalance": 0.0}, centres)
    assert not recovered_both_modes({**spread, "loc": {"z0": [0.0, 0.0], "z1": [0.05, 0.0]},
                                     "quality/mode_imbalance": 0.0}, centres)


def test_unexpected_error_is_one_line_with_saved_traceback(tmp_path, monkeypatch, capsys):
    import lightning_vae.cli as cli

    def boom(*args, **kwargs):
        raise KeyError("simulated internal failure")

    monkeypatch.setattr(cli, "build_cli", boom)
    monkeypatch.setattr(cli, "LOG_ROOT", str(tmp_path / "logs"))
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0]
    saved = err[0].rsplit("traceback saved to ", 1)[1]
    assert "simulated internal failure" in open(saved).read()


def test_point_cloud_from_a_file_trains_and_skips_geometry(tmp_path):
    """A user's own points (.npy) are a data source: training runs, sample quality logs
    MMD, and the geometry-based metrics are skipped (no manifold is known)."""
    import numpy as np

    from lightning_vae.data import Circle

    path = tmp_path / "points.npy"
    np.save(path, Circle(ambient_dim=3).sample(3560, torch.Generator().manual_seed(0)).numpy())
    run = fit("seed_spread.yaml", tmp_path, "--data.manifold=lightning_vae.data.PointCloud",
              f"--data.manifold.path={path}", "--trainer.max_epochs=5",
              "--sample_quality.every_n_epochs=5")
    s = read_scalars(run)
    assert "quality/mmd" in s and "quality/dist_mean" not in s
    assert math.isfinite(s["train/loss"][-1][1])


@pytest.mark.parametrize("args,expected", [
    (["--data.manifold=lightning_vae.data.Cirlce"],
     "unknown class lightning_vae.data.Cirlce: module 'lightning_vae.data' has no 'Cirlce'; expected a "
     "subclass of lightning_vae.data.manifolds.Manifold"),
    (["--data.manifold=lightning_vae.data.Torus", "--data.manifold.ambient_dim=2"],
     "ambient_dim must be >= 3 (the natural dimension of Torus), got 2"),
    (["--data.manifold=lightning_vae.data.Circle", "--data.manifold.noise_std=-0.1"],
     "noise_std must be >= 0, got -0.1"),
    (["--model.objective.init_args.noise_std=-1"], "noise_std must be >= 0, got -1"),
    (["--model.decoder=lightning_vae.nets.DeterministicDecoder",
      "--model.objective=lightning_vae.objectives.ELBO"],
     "a deterministic decoder has no likelihood of its own: train it with a spread objective"),
    (["--model.latent=lightning_vae.latents.CategoricalLatent", "--model.latent.n_states=0"],
     "n_states must be an integer >= 2, got 0"),
    (["--model.latent=lightning_vae.latents.GaussianLatent", "--model.latent.iwae_samples=0"],
     "iwae_samples must be an integer >= 1, got 0"),
    (["--model.objective.init_args.kernel=lightning_vae.kernels.Laplace"],
     "unknown class lightning_vae.kernels.Laplace"),
])
def test_bad_model_and_data_choices_are_one_line(args, expected, tmp_path, capsys):
    from lightning_vae.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *args,
              f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and expected in errors[0], err[-600:]
    assert "Traceback" not in err
    assert not any(tmp_path.rglob("*.ckpt"))


def test_a_users_own_manifold_is_one_class(tmp_path):
    """A Manifold subclass outside the package, named by class_path and embedded in R^4:
    it trains and sample quality measures distances to it."""
    run = fit("seed_spread.yaml", tmp_path, "--data.manifold=custom_manifold.Parabola",
              "--data.manifold.ambient_dim=4", "--trainer.max_epochs=5",
              "--sample_quality.every_n_epochs=5")
    s = read_scalars(run)
    assert 0 <= s["quality/dist_mean"][-1][1] < 1.0
    assert run.joinpath("config.yaml").read_text().count("custom_manifold.Parabola") == 1


def test_learned_mixture_weights_train_log_and_reload(tmp_path):
    """circle_spread.yaml's 64-state latent learns its weights: they move away from uniform,
    their effective number is logged, and the checkpoint restores them."""
    run = fit("circle_spread.yaml", tmp_path, "--trainer.max_epochs=2")
    s = read_scalars(run)
    effective = [v for _, v in s["latent/effective_states"]]
    assert effective[0] == pytest.approx(64, abs=1e-3) and effective[-1] < 64 - 1e-3
    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    weights = model.net.log_prior(torch.zeros(())).exp()
    entropy = -(weights * weights.log()).sum()
    assert float(entropy.exp()) == pytest.approx(effective[-1], rel=1e-5)


def test_a_csv_logger_run_gets_the_figures_as_png_and_the_hp_finals(tmp_path):
    """Figures and the final hp/* values do not need TensorBoard."""
    import csv

    run = fit("seed_spread.yaml", tmp_path, "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
              "--trainer.logger.init_args.name=seed_spread", "--trainer.max_epochs=4")
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    # Every 4th epoch (TINY) = the last: the samples, the model's log-density and posterior;
    # at the end of training, the decoder std per axis.
    assert pngs == ["decoder_std_per_axis_step0000080.png", "samples_log_density_step0000080.png",
                    "samples_posterior_step0000080.png", "samples_scatter_step0000080.png"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    finals = {k: v for r in rows for k, v in r.items() if k.startswith("hp/") and v}
    assert {"hp/val_loss", "hp/quality_mmd", "hp/collapse_step", "hp/diverged"} <= set(finals)
    assert float(finals["hp/collapse_step"]) == -1 and float(finals["hp/diverged"]) == 0
    assert "seed: 0" in (run / "hparams.yaml").read_text()
    assert not list(run.glob("events.out.tfevents*"))  # no TensorBoard involved


@pytest.mark.slow  # W&B's offline service starts per run (~10 s)
def test_a_wandb_offline_run_gets_the_figures_and_the_hp_finals(tmp_path, monkeypatch):
    """W&B (offline: no network): each run's figures as PNGs in its own directory (next to
    its checkpoints and config.yaml, so two runs never share one) and as W&B images; the
    final hp/* values and HPARAMS through the logger."""
    pytest.importorskip("wandb", reason="wandb is not installed: the W&B logger path is not tested")
    from lightning_vae.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *TINY[1:], "--trainer.max_epochs=4",
            "--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.logger.init_args.offline=true",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.project=lvae"]
    wandb = pytest.importorskip("wandb")
    main(args)
    wandb.finish()  # in one process W&B would otherwise log the next run into this one
    main(args)  # a second run in the same save_dir: its own directory
    wandb.finish()
    runs = sorted(p for p in (tmp_path / "lvae").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").exists()
        assert sorted(p.name for p in (run / "figures").glob("*.png")) == [
            "decoder_std_per_axis_step0000080.png", "samples_log_density_step0000080.png",
            "samples_posterior_step0000080.png", "samples_scatter_step0000080.png"]
        (offline,) = (tmp_path / "wandb").glob(f"offline-run-*-{run.name}")
        media = {p.parent.name + "/" + p.name.rsplit("_", 2)[0] for p in (offline / "files" / "media").rglob("*.png")}
        assert media == {"samples/scatter", "samples/log_density", "samples/posterior", "decoder/std_per_axis"}
        # The run's records (W&B's binary log): the final values went through the logger.
        records = next(offline.glob("run-*.wandb")).read_bytes()
        for key in (b"hp/val_loss", b"hp/quality_mmd", b"hp/collapse_step", b"hp/diverged", b"train/loss"):
            assert key in records, key


def test_an_unimportable_user_module_is_named_with_its_error(tmp_path, monkeypatch, capsys):
    from lightning_vae.cli import main

    (tmp_path / "usermod.py").write_text("import not_a_real_package\n\nclass Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, why in [("usermod.Mine", "importing module 'usermod' failed: ModuleNotFoundError: "
                                         "No module named 'not_a_real_package'"),
                        ("nosuchmod.Mine", "no module named 'nosuchmod' (is it installed, or on PYTHONPATH?)"),
                        ("lightning_vae.objectives.Nope", "module 'lightning_vae.objectives' has no 'Nope'")]:
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), f"--model.objective={target}",
                  f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert len(err) == 1 and f"model.objective: unknown class {target}: {why}" in err[0], err
    assert not (tmp_path / "logs").exists()


def test_resuming_a_finished_run_says_so_and_writes_nothing(runs):
    import logging

    from lightning_vae.cli import main

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("lightning_vae").addHandler(handler)
    before = sorted(p.name for p in runs["root"].rglob("*"))
    ckpt = runs["spread"] / "checkpoints" / "last.ckpt"
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *TINY, f"--ckpt_path={ckpt}",
                  f"--trainer.logger.init_args.save_dir={runs['root']}",
                  f"--trainer.default_root_dir={runs['root']}"])
    finally:
        logging.getLogger("lightning_vae").removeHandler(handler)
    assert exit_.value.code == 0
    assert any(f"{ckpt} is of a finished run (160 of 160 optimizer steps): nothing to train" in r.getMessage()
               for r in records), [r.getMessage() for r in records]
    assert sorted(p.name for p in runs["root"].rglob("*")) == before


def test_the_progress_bar_counts_optimizer_steps(tmp_path):
    """One Lightning step is a group of K = 32 optimizer steps; the bar counts the steps."""
    from lightning_vae.callbacks import StepProgressBar
    from lightning_vae.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "seed_spread.yaml"), *TINY, "--trainer.max_epochs=2",
                     "--trainer.enable_progress_bar=true", f"--trainer.logger.init_args.save_dir={tmp_path}",
                     f"--trainer.default_root_dir={tmp_path}"], run=False)
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is StepProgressBar
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((bar.train_progress_bar.n, bar.train_progress_bar.total))

    cli.trainer.callbacks.append(Spy())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen == [(20, 20), (20, 20)]  # 2560 points / batch 128 per epoch, in one group each


def test_a_run_directory_taken_meanwhile_is_never_shared(tmp_path, monkeypatch):
    """Two runs started at the same moment both choose version_0; the one that creates it
    second must not write into it. Made deterministic here: right after this run's checks
    (when it has chosen version_0), another run takes version_0 and writes there. This run
    reserves the next free directory instead (an exclusive mkdir), and the other's files
    are untouched; without the reservation it wrote its events and config into version_0."""
    from lightning_vae import preflight

    check = preflight.check_run_dir
    other = tmp_path / "seed_spread" / "version_0"

    def then_another_run_takes_it(logger, *args, **kwargs):
        check(logger, *args, **kwargs)
        assert logger.log_dir == str(other)  # this run chose version_0
        other.mkdir(parents=True)
        (other / "events.out.tfevents.other").write_text("the other run's")

    monkeypatch.setattr(preflight, "check_run_dir", then_another_run_takes_it)
    from lightning_vae.cli import main

    main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *TINY, "--trainer.max_epochs=1",
          "--data.n_train=256", "--data.batch_size=64", f"--trainer.logger.init_args.save_dir={tmp_path}",
          f"--trainer.default_root_dir={tmp_path}"])
    assert [d.name for d in run_dirs(tmp_path, "seed_spread")] == ["version_0", "version_1"]
    run = tmp_path / "seed_spread" / "version_1"
    assert sorted(p.name for p in other.iterdir()) == ["events.out.tfevents.other"]
    assert (run / "config.yaml").is_file() and (run / "outcome.json").is_file()
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
