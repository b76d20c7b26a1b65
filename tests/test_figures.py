"""The figures of data in R^D and of the model's inside: the sample scatter on the data's
PCA plane, the posterior q(z|x) along the data (``samples/posterior``) and the decoder std
per axis over the run (``decoder/std_per_axis``, with its per-axis scalars and the
monitor's history, which a checkpoint keeps)."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, TINY, fit, run_dirs

from lightning_vae.callbacks import (
    DecoderVarianceMonitor,
    SampleFigure,
    _data_plane,
    _principal_axes,
)
from lightning_vae.data import ManifoldDataModule
from lightning_vae.data.manifolds import Circle
from lightning_vae.latents import CategoricalLatent, GaussianLatent
from lightning_vae.model import VAE
from lightning_vae.nets import DeterministicDecoder
from lightning_vae.objectives import SpreadELBO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NEW_FIGURES = ("samples_posterior", "decoder_std_per_axis")
NEW_IMAGE_TAGS = ("samples/posterior", "decoder/std_per_axis")
# What conftest's TINY runs: 2560 points in batches of 128, 8 epochs.
STEPS = 8 * (2560 // 128)


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(run: Path) -> dict[str, dict[int, float]]:
    acc = _events(run)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _per_axis_tags(tags) -> set[str]:
    """The monitor's per-axis tags among ``tags``."""
    return {t for t in tags if re.fullmatch(r"decoder/(likelihood_)?std_ratio_[a-z0-9]+", t)}


def _figures(run: Path, name: str) -> list[Path]:
    return sorted((run / "figures").glob(f"{name}_step*.png"))


def _assert_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE), f"{path}: not a PNG"


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    assert data.startswith(PNG_SIGNATURE), data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _seed_data() -> ManifoldDataModule:
    """The seed's data as conftest's TINY runs draw them."""
    dm = ManifoldDataModule(n_train=2560, n_val=500, n_test=500)
    dm.setup()
    return dm


# --- the data's plane --------------------------------------------------------------------


def test_data_plane_recovers_a_known_plane_in_r5():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))[0].T  # (2, 5) orthonormal
    centre = torch.randn(5, generator=g, dtype=torch.float64)
    coords = torch.randn(400, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    points = (centre + coords @ basis).float()
    mean, axes, labels, share = _data_plane(points)
    assert labels == ("principal axis 1", "principal axis 2")
    assert axes.shape == (2, 5)
    torch.testing.assert_close(axes @ axes.T, torch.eye(2, dtype=axes.dtype), atol=1e-10, rtol=0)
    uv = (points.double() - mean) @ axes.T
    # The plane holds all of the data: the projection is an isometry of the points.
    err = (torch.cdist(uv, uv) - torch.cdist(points.double(), points.double())).abs().max()
    assert float(err) < 1e-5, float(err)
    assert share == pytest.approx(1.0, abs=1e-9)
    # Each axis is signed so that its largest component is positive.
    for row in axes:
        assert float(row[row.abs().argmax()]) > 0
    # Off the plane: the share is what the plane holds.
    noisy = points.double() + 0.5 * torch.randn(400, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [0, 0, 0, 0, 1.0], dtype=torch.float64)
    _, _, _, share = _data_plane(noisy)
    centred = noisy - noisy.mean(0)
    total = float(centred.square().sum())
    assert share == pytest.approx(1 - float((centred @ torch.linalg.svd(centred).Vh[2:].T).square().sum()) / total)
    assert 0.9 < share < 1.0


def test_data_plane_of_2d_data_is_the_plane_itself_and_1d_has_none():
    data = torch.randn(50, 2) * torch.tensor([1.0, 0.0])
    mean, axes, labels, share = _data_plane(data)
    assert labels == ("x", "y") and share == 1.0
    assert torch.equal(axes, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(mean, data.double().mean(0))
    with pytest.raises(ValueError, match="a plane needs data with D >= 2 axes, got D = 1"):
        _data_plane(torch.randn(10, 1))
    # The seed's line: its first principal axis is +x, all of the variance.
    _, axis, share = _principal_axes(_seed_data().val_x, 1)
    torch.testing.assert_close(axis, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert share == pytest.approx(1.0)


def test_scatter_of_data_in_r3_is_drawn_on_the_pca_plane():
    import matplotlib.pyplot as plt

    dm = ManifoldDataModule(manifold=Circle(ambient_dim=3), n_train=300, n_val=300, n_test=10)
    dm.setup()
    model = VAE(data_dim=3)
    callback = SampleFigure(n_points=200)
    fig = callback.figure(model, dm, step=7)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("principal axis 1", "principal axis 2")
    assert ax.get_title() == "step 7; PCA plane, 100% of the data's variance"
    mean, axes, _, _ = _data_plane(dm.val_x[:200])
    held_out = ax.collections[1].get_offsets()
    torch.testing.assert_close(torch.as_tensor(held_out.data, dtype=torch.float64),
                               ((dm.val_x[:200].double() - mean) @ axes.T).float().double())
    plt.close(fig)
    # 2-D data: the axes x, y as before (the raw coordinates, no title note).
    seed = _seed_data()
    fig = callback.figure(VAE(data_dim=2), seed, step=3)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("x", "y", "step 3")
    torch.testing.assert_close(torch.as_tensor(ax.collections[1].get_offsets().data, dtype=torch.float32),
                               seed.val_x[:200])
    plt.close(fig)


# --- the posterior figure --------------------------------------------------------------


def test_posterior_figure_of_each_latent_family():
    import matplotlib.pyplot as plt

    dm = _seed_data()
    callback = SampleFigure(n_points=200)
    x = dm.val_x[:200]
    u = (x[:, 0] - x[:, 0].mean()).sort().values  # the first principal coordinate: x - mean(x)

    model = VAE(data_dim=2)  # the seed's Bernoulli latent: q(z=0|x), q(z=1|x)
    fig = callback.posterior_figure(model, dm, step=5)
    ax = fig.axes[0]
    assert "(= x)" in ax.get_xlabel() and "step 5" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["q(z=0 | x)", "q(z=1 | x)"]
    q = model.net.log_q(x[x[:, 0].argsort()]).exp()
    for k, points in enumerate(ax.collections):
        xy = torch.as_tensor(points.get_offsets().data)
        torch.testing.assert_close(xy[:, 0].float(), u)
        torch.testing.assert_close(xy[:, 1].float(), q[:, k])
    plt.close(fig)

    fig = callback.posterior_figure(VAE(data_dim=2, latent=CategoricalLatent(n_states=4)), dm, step=5)
    assert len(fig.axes[0].collections) == 4 and len(fig.axes) == 1
    plt.close(fig)

    many = VAE(data_dim=2, latent=CategoricalLatent(n_states=16))
    fig = callback.posterior_figure(many, dm, step=5)
    assert len(fig.axes) == 2  # the states' scatter and its colour bar
    xy = torch.as_tensor(fig.axes[0].collections[0].get_offsets().data)
    states = many.net.log_q(x[x[:, 0].argsort()]).argmax(1)
    assert torch.equal(xy[:, 1].long(), states)
    assert "most probable of 16 states" in fig.axes[0].get_title()
    plt.close(fig)

    gauss = VAE(data_dim=2, latent=GaussianLatent(dim=6))
    fig = callback.posterior_figure(gauss, dm, step=5)
    ax = fig.axes[0]
    assert len(ax.get_legend().get_texts()) == 4 and "first 4 of 6" in ax.get_title()
    loc, scale = gauss.net.encode_params(x[x[:, 0].argsort()])
    means = [c for c in ax.collections if c.get_offsets().shape[1] == 2 and not hasattr(c, "get_segments")]
    torch.testing.assert_close(torch.as_tensor(means[0].get_offsets().data)[:, 1].float(), loc[:, 0])
    bars = [c for c in ax.collections if hasattr(c, "get_segments")]
    first = torch.as_tensor(bars[0].get_segments()[0])  # [(u, m - s), (u, m + s)] of the first point
    torch.testing.assert_close(first[:, 1].float(), torch.stack([loc[0, 0] - scale[0, 0], loc[0, 0] + scale[0, 0]]))
    plt.close(fig)

    # A deterministic decoder still has an encoder; a model without one has no figure.
    delta = VAE(data_dim=2, decoder=DeterministicDecoder(), objective=SpreadELBO(noise_std=0.3))
    fig = callback.posterior_figure(delta, dm, step=5)
    assert fig is not None
    plt.close(fig)
    no_encoder = torch.nn.Linear(2, 2)
    assert callback.posterior_figure(no_encoder, dm, step=5) is None


# --- the monitor: per-axis scalars, history, figure ------------------------------------


class _Capture:
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, values, step) -> None:
        self.rows.append((step, dict(values)))


def _fake_trainer(data_scale: float, dim: int):
    logger = _Capture()
    datamodule = SimpleNamespace(data_scale=data_scale, axis_std=torch.ones(dim))
    return SimpleNamespace(datamodule=datamodule, is_global_zero=True, loggers=[logger]), logger


def test_bad_monitor_arguments():
    with pytest.raises(ValueError, match=r"^max_axes must be >= 0, got -1$"):
        DecoderVarianceMonitor(max_axes=-1)
    with pytest.raises(ValueError, match=r"^max_states must be >= 0, got -2$"):
        DecoderVarianceMonitor(max_states=-2)


def test_per_axis_scalars_are_the_min_over_states_and_respect_max_axes():
    model = VAE(data_dim=3, objective=SpreadELBO(noise_std=0.5), latent=CategoricalLatent(n_states=4))
    trainer, logger = _fake_trainer(2.0, 3)
    monitor = DecoderVarianceMonitor(max_axes=3)
    with torch.no_grad():
        monitor._log(trainer, model, 10)
    ((step, values),) = logger.rows
    assert step == 10
    _, scale = model.decoder_params()
    raw, lik = scale.amin(0) / 2.0, torch.hypot(scale, torch.tensor(0.5)).amin(0) / 2.0
    for d, a in enumerate("xyz"):
        assert values[f"decoder/std_ratio_{a}"] == pytest.approx(float(raw[d]), rel=1e-6)
        assert values[f"decoder/likelihood_std_ratio_{a}"] == pytest.approx(float(lik[d]), rel=1e-6)
    assert min(values[f"decoder/std_ratio_{a}"] for a in "xyz") == pytest.approx(values["decoder/min_std_ratio"])
    assert monitor.history[0]["step"] == [10]
    assert monitor.history[0]["std_ratio"][0] == pytest.approx(raw.tolist(), rel=1e-6)
    # Data with more axes than max_axes: none of it.
    trainer, logger = _fake_trainer(2.0, 3)
    narrow = DecoderVarianceMonitor(max_axes=2)
    with torch.no_grad():
        narrow._log(trainer, model, 10)
    assert not _per_axis_tags(logger.rows[0][1])
    assert narrow.history[0]["step"] == [] and narrow.std_figure(0) is None


def _filled(monitor: DecoderVarianceMonitor, steps, members: int = 1, dim: int = 2) -> None:
    for s in steps:
        raw = [[math.exp(-s / 50) * (m + 1)] + [1.0] * (dim - 1) for m in range(members)]
        lik = [[math.hypot(r[0], 0.1)] + r[1:] for r in raw]
        monitor._remember(s, [raw, lik], final=False)


def test_history_is_thinned_evenly_and_a_resume_replaces_what_followed():
    monitor = DecoderVarianceMonitor()
    n = DecoderVarianceMonitor.MAX_HISTORY
    _filled(monitor, range(0, 10 * (3 * n), 10))
    steps = monitor.history[0]["step"]
    assert len(steps) <= n + 1 and steps[0] == 0
    gaps = {b - a for a, b in itertools.pairwise(steps)}
    assert gaps == {40}, gaps  # thinned twice: every fourth logged step, evenly
    assert len(monitor.history[0]["std_ratio"]) == len(steps) == len(monitor.history[0]["likelihood_std_ratio"])
    monitor._remember(10 * 3 * n + 5, [[[0.5, 1.0]], [[0.6, 1.0]]], final=True)  # the final step: always kept
    assert monitor.history[0]["step"][-1] == 10 * 3 * n + 5
    # A resume from an earlier checkpoint: its step replaces the points after it.
    monitor._remember(1000, [[[0.5, 1.0]], [[0.6, 1.0]]], final=False)
    assert monitor.history[0]["step"][-1] == 1000 and max(monitor.history[0]["step"]) == 1000


def test_std_figure_draws_both_stds_the_threshold_and_the_collapse():
    import matplotlib.pyplot as plt

    monitor = DecoderVarianceMonitor(collapse_ratio=1e-2)
    assert monitor.std_figure(0) is None  # nothing logged yet
    _filled(monitor, range(0, 400, 10))
    monitor.collapses = [{"step": 230, "axis": "x", "state": 1, "std": 0.009}]
    fig = monitor.std_figure(0, 400, data_scale=1.0)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    h = monitor.history[0]
    solid, dashed = ax.lines[0], ax.lines[1]  # axis x: the likelihood's, the decoder's
    assert (solid.get_linestyle(), dashed.get_linestyle()) == ("-", "--")
    assert list(solid.get_xdata()) == h["step"]
    assert list(solid.get_ydata()) == pytest.approx([r[0] for r in h["likelihood_std_ratio"]])
    assert list(dashed.get_ydata()) == pytest.approx([r[0] for r in h["std_ratio"]])
    flat = [tuple(line.get_ydata()) for line in ax.lines if len(line.get_xdata()) == 2]
    assert (1e-2, 1e-2) in flat  # the threshold (axhline)
    assert any(tuple(line.get_xdata()) == (230, 230) for line in ax.lines)  # the collapse (axvline)
    texts = [t.get_text() for t in ax.texts]
    assert "collapse threshold (0.01 x data scale)" in texts and "collapse, step 230 (axis x)" in texts
    plt.close(fig)


def test_state_dict_round_trip_keeps_the_history_and_old_state_dicts_load(tmp_path):
    monitor = DecoderVarianceMonitor()
    _filled(monitor, range(0, 100, 10))
    monitor.collapses = [{"step": 40, "axis": "y", "state": 1, "std": 0.009}]
    state = monitor.state_dict()
    assert state["collapse"] == monitor.collapses[0] and "history" in state
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)  # plain types: a checkpoint's load
    again = DecoderVarianceMonitor()
    again.load_state_dict(loaded)
    assert again.history == monitor.history and again.collapses == monitor.collapses
    assert again.state_dict() == state
    # Later points go on from the restored ones.
    _filled(again, [100])
    assert again.history[0]["step"] == list(range(0, 110, 10))
    # A state dict written before the history was kept: it loads, with an empty history.
    old = DecoderVarianceMonitor()
    old.load_state_dict({"collapse": None})
    assert old.collapses == [None] and old.history == [{"step": [], "std_ratio": [], "likelihood_std_ratio": []}]
    _filled(old, [0, 10])
    assert old.history[0]["step"] == [0, 10]
    ensemble = DecoderVarianceMonitor()
    ensemble.load_state_dict({"collapses": [None, {"step": 3, "axis": "y", "state": 0, "std": 0.0}]})
    assert len(ensemble.history) == 2 and all(h["step"] == [] for h in ensemble.history)
    _filled(ensemble, [0], members=2)
    assert ensemble.history[1]["std_ratio"] == [[2.0, 1.0]]
    assert "collapses" in ensemble.state_dict() and len(ensemble.state_dict()["history"]) == 2


# --- end to end: the real CLI --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elbo", "spread"])
def test_seed_runs_write_the_new_figures(runs, kind):
    run = runs[kind]
    for name in NEW_FIGURES:
        found = _figures(run, name)
        assert found, f"{run}: no figures/{name}_step*.png"
        for path in found:
            _assert_png(path)
    assert [p.name for p in _figures(run, "decoder_std_per_axis")] == [f"decoder_std_per_axis_step{STEPS:07d}.png"]
    assert _figures(run, "samples_posterior")[-1].name == f"samples_posterior_step{STEPS:07d}.png"
    acc = _events(run)
    for tag in NEW_IMAGE_TAGS:
        assert tag in acc.Tags()["images"], f"{run}: image tags {acc.Tags()['images']}"
    (image,) = acc.Images("decoder/std_per_axis")
    assert image.step == STEPS
    # The same picture as the file (TensorBoard's own PNG encoding of the same pixels).
    assert _png_size(image.encoded_image_string) == (image.width, image.height) == \
        _png_size(_figures(run, "decoder_std_per_axis")[0].read_bytes())


def test_per_axis_scalars_of_the_seed_runs(runs):
    data_scale = _seed_data().data_scale
    noise = 0.3  # configs/seed_spread.yaml
    for kind in ("elbo", "spread"):
        s = _scalars(runs[kind])
        names = _per_axis_tags(s)
        assert names == {f"decoder/{n}_{a}" for n in ("std_ratio", "likelihood_std_ratio") for a in "xy"}, names
        steps = sorted(s["decoder/min_std_ratio"])
        assert steps[0] == 0 and steps[-1] == STEPS
        for tag in names:
            assert sorted(s[tag]) == steps, tag
        for step in steps:
            raw = [s[f"decoder/std_ratio_{a}"][step] for a in "xy"]
            lik = [s[f"decoder/likelihood_std_ratio_{a}"][step] for a in "xy"]
            assert min(raw) == pytest.approx(s["decoder/min_std_ratio"][step], rel=1e-6)
            assert min(lik) == pytest.approx(s["decoder/min_likelihood_std_ratio"][step], rel=1e-6)
            if kind == "elbo":  # the ELBO trains the decoder's own likelihood
                assert lik == raw, step
            else:  # sqrt(std^2 + noise^2), per axis: never below the noise floor
                assert lik[1] >= noise / data_scale * (1 - 1e-6), (step, lik)
                for r, v in zip(raw, lik):
                    assert v == pytest.approx(math.hypot(r, noise / data_scale), rel=1e-5)
    # The ELBO's y-axis std falls far below the spread run's floor.
    elbo_y = _scalars(runs["elbo"])["decoder/likelihood_std_ratio_y"][STEPS]
    assert elbo_y < noise / data_scale / 10


def test_checkpoint_keeps_the_history_of_the_logged_values(runs):
    run = runs["elbo"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "DecoderVarianceMonitor" in k]
    (history,) = state["history"]
    s = _scalars(run)
    logged = sorted(st for st in s["decoder/std_ratio_y"] if st <= ckpt["global_step"])
    assert history["step"] == [st for st in logged if st < ckpt["global_step"]]
    for st, raw, lik in zip(history["step"], history["std_ratio"], history["likelihood_std_ratio"]):
        assert raw == pytest.approx([s[f"decoder/std_ratio_{a}"][st] for a in "xy"], rel=1e-6)
        assert lik == pytest.approx([s[f"decoder/likelihood_std_ratio_{a}"][st] for a in "xy"], rel=1e-6)


@pytest.fixture(scope="module")
def circle_run(tmp_path_factory) -> Path:
    """A tiny spread run on a circle in R^3 (64 states)."""
    return fit("circle_spread.yaml", tmp_path_factory.mktemp("circle"), "--trainer.max_epochs=2")


def test_run_in_r3_writes_the_new_figures_and_per_axis_scalars(circle_run):
    for name in (*NEW_FIGURES, "samples_scatter"):
        found = _figures(circle_run, name)
        assert found, f"{circle_run}: no figures/{name}_step*.png"
        _assert_png(found[-1])
    acc = _events(circle_run)
    assert set(NEW_IMAGE_TAGS) <= set(acc.Tags()["images"]), acc.Tags()["images"]
    s = _scalars(circle_run)
    assert _per_axis_tags(s) == {
        f"decoder/{n}_{a}" for n in ("std_ratio", "likelihood_std_ratio") for a in "xyz"}
    floor = 0.1 / ManifoldDataModule(manifold=Circle(ambient_dim=3), n_train=2560, n_val=500,
                                     n_test=500).data_scale
    assert all(v >= floor * (1 - 1e-6) for a in "xyz" for v in s[f"decoder/likelihood_std_ratio_{a}"].values())


@pytest.mark.slow  # a fit and its resume (~13 s); the state-dict round trip is tested above
def test_history_survives_a_resume(tmp_path):
    from lightning_vae.cli import main

    first = fit("seed_elbo.yaml", tmp_path, "--trainer.max_epochs=2")
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 40
    cli = main(["fit", "--config", str(first / "config.yaml"), "--ckpt_path", str(last),
                "--trainer.max_epochs=4"])
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, DecoderVarianceMonitor)]
    # Steps 0-30 from the first run's checkpoint, then the resumed run's, and its final step.
    assert monitor.history[0]["step"] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    before = _scalars(first)
    assert monitor.history[0]["std_ratio"][1] == pytest.approx(
        [before[f"decoder/std_ratio_{a}"][10] for a in "xy"], rel=1e-6)
    (resumed,) = [d for d in run_dirs(tmp_path, "seed_elbo") if d != first]
    (figure,) = _figures(resumed, "decoder_std_per_axis")
    assert figure.name == "decoder_std_per_axis_step0000080.png"
    _assert_png(figure)


def test_ensemble_writes_a_std_figure_per_member(tmp_path):
    from lightning_vae.ensemble import main as ensemble_main

    seeds = [0, 1]
    ensemble_main(["fit", "--config", str(CONFIGS / "seed_elbo.yaml"), *TINY,
                         "--trainer.max_epochs=2", "--data.steps_per_batch=6",
                         f"--model.seeds=[{','.join(map(str, seeds))}]",
                         f"--trainer.logger.init_args.save_dir={tmp_path}",
                         "--trainer.logger.init_args.name=ensemble"])
    (run,) = run_dirs(tmp_path, "ensemble")
    assert not _figures(run, "decoder_std_per_axis")  # the members' own runs get them
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "DecoderVarianceMonitor" in k]
    history = state["history"]
    assert len(history) == len(seeds) and len(state["collapses"]) == len(seeds)
    assert history[0]["std_ratio"] != history[1]["std_ratio"]  # each member's own
    for m, s in enumerate(seeds):
        member = run / f"seed_{s}"
        (figure,) = _figures(member, "decoder_std_per_axis")
        assert figure.name == "decoder_std_per_axis_step0000040.png"
        _assert_png(figure)
        _assert_png(_figures(member, "samples_posterior")[-1])
        acc = _events(member)
        assert set(NEW_IMAGE_TAGS) <= set(acc.Tags()["images"]), acc.Tags()["images"]
        scalars = _scalars(member)
        h = history[m]  # what the checkpoint's step had logged
        assert h["step"] and h["step"] == sorted(st for st in scalars["decoder/std_ratio_y"]
                                                 if st < ckpt["global_step"])
        assert [r[1] for r in h["likelihood_std_ratio"]] == pytest.approx(
            [scalars["decoder/likelihood_std_ratio_y"][st] for st in h["step"]], rel=1e-6)
