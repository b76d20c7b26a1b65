"""Shared fixtures: tiny runs of the real CLI, written under pytest's tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The image configs: their data sets are small (1,797 digits) and their models convolutional,
# so their tiny runs have their own sizes (tests/test_images_cli.py).
IMAGE_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(("fading_", "digits_", "sprites_")))
# Linear ICA by EM: another model and data module (lightning_vae/ica_em.py, tests/test_ica_cli.py).
ICA_CONFIGS = sorted(p.name for p in CONFIGS.glob("ica_*.yaml"))
# The configs of the VAE (the package's VAE and ManifoldDataModule).
VAE_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in ICA_CONFIGS)

# A few hundred steps: enough for the ELBO's y-std to collapse (it crosses the threshold
# within ~100 steps) and for the spread run to show its bounded loss.
TINY = [
    "--trainer.max_epochs=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.n_train=2560",
    "--data.n_val=500",
    "--data.n_test=500",
    "--data.batch_size=128",
    "--sample_quality.n_samples=500",
    "--sample_figure.every_n_epochs=4",
    "--sample_figure.n_points=300",
    "--eval_every_n_steps=0",  # validation every epoch (the tests read per-epoch values)
]


# Linear ICA, tiny: a few EM iterations of three small problems (seconds).
ICA_TINY = ["--data.init_args.n=200", "--data.init_args.repeats=3", "--data.init_args.x_dim=6",
            "--data.init_args.z_dim=3", "--data.init_args.iterations_per_epoch=4", "--data.init_args.n_val=100",
            "--data.init_args.n_test=100", "--model.init_args.s_z=16", "--trainer.max_steps=8",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


def fit_ica(config: str, root: Path, *extra: str) -> Path:
    """``fit`` of an ICA config (``ICA_TINY``) through the real CLI in-process; the new run dir."""
    from lightning_vae.cli import main

    name = Path(config).stem
    before = set(run_dirs(root, name))
    main(["fit", "--config", str(CONFIGS / config), *ICA_TINY, f"--trainer.logger.init_args.save_dir={root}",
          f"--trainer.default_root_dir={root}", *extra])
    new = [p for p in run_dirs(root, name) if p not in before]
    assert len(new) == 1, f"expected one new run dir, got {new}"
    return new[0]


def run_dirs(root: Path, name: str) -> list[Path]:
    return sorted((root / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def fit(config: str, root: Path, *extra: str) -> Path:
    """Run ``fit`` through the real CLI in-process; return the new run directory."""
    from lightning_vae.cli import main

    name = Path(config).stem
    before = set(run_dirs(root, name))
    main(["fit", "--config", str(CONFIGS / config), *TINY,
          f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}",
          *extra])
    new = [p for p in run_dirs(root, name) if p not in before]
    assert len(new) == 1, f"expected one new run dir, got {new}"
    return new[0]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny ELBO run and one tiny spread run, shared by the end-to-end tests."""
    root = tmp_path_factory.mktemp("logs")
    return {"root": root, "elbo": fit("seed_elbo.yaml", root), "spread": fit("seed_spread.yaml", root)}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module of small tensors (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on a shared 2-core machine each multi-threaded
    op waits for the busy second core (~8 ms per op, 4x such a file's runtime). Threads do
    not change the results beyond float rounding, which the tolerances cover."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int):
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    import torch

    return torch.Generator().manual_seed(seed)

