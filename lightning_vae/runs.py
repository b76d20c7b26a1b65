"""Read a finished run back: TensorBoard scalars, the checkpoint, and a short summary."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lightning_vae.callbacks import SampleQuality, axis_name


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's TensorBoard event files: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def final_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint that holds the run's final (finite) weights."""
    ckpts = Path(run_dir) / "checkpoints"
    for name in ("last-finite.ckpt", "last.ckpt"):
        if (ckpts / name).exists():
            return ckpts / name
    found = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {ckpts}")
    return found[-1]


def _load(run_dir: Path):
    from lightning_vae.data import ManifoldDataModule
    from lightning_vae.model import VAE

    ckpt = final_checkpoint(run_dir)
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu")
    model.eval()
    return model, ManifoldDataModule.load_from_checkpoint(ckpt)


def decoder_summary(loc: torch.Tensor, scale: torch.Tensor) -> dict:
    """``{"loc": {"z0": [..], ..}, "std": {"z0": {"x": .., "y": ..}, ..}}`` from ``(K, D)``."""
    dim = loc.shape[1]
    return {"loc": {f"z{k}": [float(v) for v in loc[k]] for k in range(len(loc))},
            "std": {f"z{k}": {axis_name(d, dim): float(scale[k, d]) for d in range(dim)}
                    for k in range(len(scale))}}


def summarize(run_dir: str | Path) -> dict:
    """Numbers that tell a run's story: final loss, decoder params, quality, collapse."""
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    model, dm = _load(run_dir)
    dm.setup()
    with torch.no_grad():
        loc, scale = model.decoder_params()
        quality = SampleQuality(n_samples=2000).compute(model, dm)
        log_px = float(model.log_px(dm.val_x).mean())
    out = {
        "run": str(run_dir),
        "objective": repr(model.objective),
        "steps": max((s for series in scalars.values() for s, _ in series), default=0),
        "final_train_loss": scalars.get("train/loss", [(0, math.nan)])[-1][1],
        "min_train_loss": min((v for _, v in scalars.get("train/loss", [])), default=math.nan),
        "max_grad_norm": max((v for _, v in scalars.get("train/grad_norm", [])), default=math.nan),
        "val_log_px": log_px,
        "collapse_step": int(scalars["decoder/collapse_step"][-1][1])
        if "decoder/collapse_step" in scalars else None,
        **decoder_summary(loc, scale),
        **quality,
    }
    return out


def recovered_both_modes(summary: dict, centres: torch.Tensor, tol: float = 0.25,
                         max_imbalance: float = 0.04) -> bool:
    """Both modes recovered: one decoder mean within ``tol`` of each centre, and the clean
    samples split evenly (chi-square imbalance <= 0.04, i.e. fractions within 0.5 +- 0.1)."""
    locs = torch.tensor([v for v in summary["loc"].values()])  # (K, D)
    d = torch.cdist(centres, locs)  # (C, K)
    hit_each_centre = bool((d.min(dim=1).values < tol).all())
    return hit_each_centre and summary.get("quality/mode_imbalance", math.inf) <= max_imbalance
