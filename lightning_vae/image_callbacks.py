"""Image data in TensorBoard: sample grids, reconstructions, latent interpolations, and
sample-quality scores that need no download (``ImageQuality``, config group
``image_quality``; a no-op on point data).

An image sample is a decoder MEAN g(z), z ~ p(z), as in the Spread Divergence paper's
figures and scores: a Gaussian decoder's pixel noise is not part of the picture (with the
baseline's fixed variance 0.5 it would bury it). The maths of the scores is in
``lightning_vae.image_metrics`` (feature-space FD/KID/precision/recall) and in this
module's pure functions (``sharpness``, ``coverage``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vae.callbacks import (
    Cadence,
    _run_dirs,
    _tb,
    _warn,
    log_figure,
    members,
)

# A 3x3 discrete Laplacian: its response is the image's curvature, large at sharp edges.
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
SCORES_FILE = "image_quality.jsonl"  # one JSON line per scoring, in the run directory


# --- pure functions (torch only) ----------------------------------------------------------

def decoder_means(net, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` decoder means g(z), z ~ p(z), ``(n, D)``: a Gaussian latent's z from
    ``generator``, a discrete latent's states drawn by their prior weights."""
    like = next(net.parameters())
    device = generator.device if generator is not None else like.device
    if net.enumerable:
        loc, _ = net.decoder_params(like)
        k = torch.multinomial(net.log_prior(like).exp().to(device), n, replacement=True, generator=generator)
        return loc[k.to(like.device)]
    return net.decoder(net.latent.sample_prior(n, generator, like))[0]


def encode_mean(net, x: Tensor) -> Tensor:
    """The latent a reconstruction decodes: q(z|x)'s mean (Gaussian) or its most probable
    state's decoder input (discrete)."""
    if net.enumerable:
        return net.latent.states(x)[net.log_q(x).argmax(-1)]
    return net.latent.mean(net.encode_params(x))


def reconstruct(net, x: Tensor) -> Tensor:
    """g(mean of q(z|x)) ``(N, D)``: the decoder mean at the encoder's mean (Gaussian
    latent) or at its most probable state (discrete latent)."""
    return net.decoder(encode_mean(net, x))[0]


def interpolate(net, x_a: Tensor, x_b: Tensor, steps: int) -> Tensor:
    """Decoder means along the straight line between the encodings of ``x_a`` and ``x_b``
    ``(P, D)`` each: ``(P, steps, D)``, endpoints included (a Gaussian latent)."""
    if net.enumerable:
        raise ValueError("a discrete latent has no line between states: interpolations need a "
                         "GaussianLatent")
    z_a, z_b = encode_mean(net, x_a), encode_mean(net, x_b)  # (P, d)
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)[None, :, None]
    z = net.latent.interpolate(z_a[:, None], z_b[:, None], t)  # (P, steps, d)
    return net.decoder(z)[0]


def sharpness(images: Tensor) -> Tensor:
    """Mean over images of the variance of the discrete Laplacian, ``(N, C, H, W)`` -> ``()``.

    The variance-of-Laplacian focus measure (Pech-Pacheco et al. 2000): blur lowers it
    (a low-pass filter shrinks the curvature at edges), so a ratio to the data's value below
    1 means blurrier samples than the data. Replicate padding: a flat border adds nothing.
    """
    x = images if images.dtype == torch.float64 else images.float()
    c = x.shape[1]
    kernel = _LAPLACIAN.to(x)[None, None].expand(c, 1, 3, 3)
    response = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)  # (N, C, H, W)
    return response.flatten(1).var(dim=1).mean()


def coverage(theta: Tensor, low: Tensor, high: Tensor, bins: int | None = None) -> Tensor:
    """Share of the parameter box's cells holding at least half their fair share of
    ``theta`` ``(N, p)`` (1: samples spread over every part of the manifold; 1/cells: all
    in one). ``bins`` cells per axis, default 10, 5, 3 for p = 1, 2, >= 3."""
    n, p = theta.shape
    bins = bins or {1: 10, 2: 5}.get(p, 3)
    unit = ((theta.double() - low.double()) / (high.double() - low.double())).clamp(0, 1 - 1e-12)
    cell = (unit * bins).long()  # (N, p)
    flat = (cell * (bins ** torch.arange(p))).sum(-1)
    counts = torch.bincount(flat, minlength=bins**p).double()
    fair = n / bins**p
    return (counts >= 0.5 * fair).double().mean()


def image_grid(images: Tensor, rows: int | None = None) -> Tensor:
    """``(N, C, H, W)`` images tiled into one ``(H', W', C)`` array in [0, 1] (a 1-pixel
    grey border between tiles), for ``imshow``."""
    n, c, h, w = images.shape
    rows = rows or max(1, int(math.floor(math.sqrt(n))))
    cols = -(-n // rows)
    canvas = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 0.5)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, q = divmod(i, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img
    return canvas.permute(1, 2, 0)


def feature_targets(manifold, train_x: Tensor) -> Tensor | None:
    """What the feature network learns to predict from the training images: the class
    labels where the data have them (``labels_of``), the generator's parameters theta for a
    procedural manifold (``invert``), otherwise None (the network autoencodes)."""
    if callable(getattr(manifold, "labels_of", None)):
        return manifold.labels_of(train_x)
    if callable(getattr(manifold, "invert", None)):
        return manifold.invert(train_x).float()
    return None


# --- the callback -------------------------------------------------------------------------

class ImageQuality(pl.Callback):
    """For image data (a datamodule with ``image_shape``): figures and scores of the clean
    model's samples (decoder means, see the module docstring) at a validation cadence.

    Figures (PNG in ``figures/`` and TensorBoard images): ``images/samples`` (a grid),
    ``images/reconstructions`` (held-out images above their reconstructions) and, for a
    Gaussian latent, ``images/interpolations`` (one row per pair of held-out images).

    Scalars, against the first ``n_samples`` held-out (validation) images:

    - ``images/fd``, ``images/kid``, ``images/precision``, ``images/recall``: Frechet
      distance, KID and improved precision/recall (Kynkaanniemi et al. 2019) IN OUR FEATURE
      SPACE: that of a small network the project trains on the training split
      (``lightning_vae.image_metrics``; not Inception, so not FID), cached, its checkpoint's
      sha256 written next to every score (``image_quality.jsonl`` and TensorBoard text);
    - ``images/sharpness``: the samples' variance of the Laplacian over the held-out
      images' (``sharpness``; 1 = as sharp as the data, < 1 blurrier);
    - for a procedural manifold with an exact generator: ``images/dist_mean``,
      ``images/dist_p95`` (distance of the samples to the manifold, by inverting g), and
      ``images/coverage`` (``coverage`` of the recovered parameters; 1 = every part of the
      parameter box reached) with ``images/theta<i>_min``/``_max``.

    Args:
        every_n_epochs: at the validation of every n-th epoch; null: by time,
            ``every_n_seconds``. Always at the run's final validation.
        every_n_seconds: with ``every_n_epochs`` null, at the first validation this long
            after the last.
        n_samples: samples scored (and held-out images they are compared with).
        seed: seed of the sampling generator (the same z every time).
        scores: compute the feature-space scores (the first time trains the feature
            network: seconds on a CPU, then cached).
        figures: draw the grids.
        grid: samples in the grid.
        n_interpolations: pairs of held-out images interpolated between.
        interpolation_steps: images per interpolation, endpoints included.
        cache_dir: where feature networks are cached (default ``$LVAE_CACHE_DIR/features``
            or ``~/.cache/lightning_vae/features``).
        feature_steps: training steps of the feature network (part of its cache key and
            of its hash: scores are comparable only at the same value).
    """

    def __init__(self, every_n_epochs: int | None = None, every_n_seconds: float = 60.0, n_samples: int = 1000,
                 seed: int = 0, scores: bool = True, figures: bool = True, grid: int = 64,
                 n_interpolations: int = 6, interpolation_steps: int = 8, cache_dir: str | None = None,
                 feature_steps: int = 600) -> None:
        for name, value, least in (("n_samples", n_samples, 4), ("grid", grid, 1),
                                   ("n_interpolations", n_interpolations, 1),
                                   ("interpolation_steps", interpolation_steps, 2),
                                   ("feature_steps", feature_steps, 1)):
            if not (isinstance(value, int) and value >= least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.cadence = Cadence(every_n_epochs, every_n_seconds)
        self.n_samples, self.seed, self.scores, self.figures = n_samples, seed, scores, figures
        self.grid, self.n_interpolations, self.interpolation_steps = grid, n_interpolations, interpolation_steps
        self.cache_dir, self.feature_steps = cache_dir, feature_steps
        self._scorer = None
        self._data_sharpness: float | None = None
        self._said_ensemble = False

    # --- the parts ---

    def _feature_scores(self, datamodule):
        if self._scorer is None:
            from lightning_vae.image_metrics import FeatureSpaceScores

            train = datamodule.images(datamodule.train_x)
            targets = feature_targets(datamodule.manifold, datamodule.train_x)
            with torch.enable_grad():  # compute() runs under no_grad; the first call trains the net
                self._scorer = FeatureSpaceScores(train, targets=targets, cache_dir=self.cache_dir,
                                                  train_kwargs={"steps": self.feature_steps})
        return self._scorer

    @torch.no_grad()
    def compute(self, net, datamodule) -> dict[str, float | str]:
        """The scores of the model core ``net`` now, plain floats (and the feature net's hash)."""
        val = datamodule.val_x[: self.n_samples]
        g = torch.Generator().manual_seed(self.seed)
        x = decoder_means(net, len(val), g).float().cpu()
        images, real = datamodule.images(x), datamodule.images(val)
        values: dict[str, float | str] = {}
        if self._data_sharpness is None:
            self._data_sharpness = float(sharpness(real))
        if self._data_sharpness > 0 and torch.isfinite(x).all():
            values["images/sharpness"] = float(sharpness(images)) / self._data_sharpness
        manifold = datamodule.manifold
        if not torch.isfinite(x).all():
            return values  # a diverged model: the guard reports it; nothing to score
        if getattr(manifold, "has_geometry", False) and callable(getattr(manifold, "project", None)):
            theta, dist = manifold.project(x)  # one inversion for both
            values["images/dist_mean"] = float(dist.mean())
            values["images/dist_p95"] = float(torch.quantile(dist, 0.95))
            values["images/coverage"] = float(coverage(theta, manifold.theta_low, manifold.theta_high))
            for i in range(theta.shape[1]):
                values[f"images/theta{i}_min"] = float(theta[:, i].min())
                values[f"images/theta{i}_max"] = float(theta[:, i].max())
        if self.scores:
            scored = self._feature_scores(datamodule).score(real, images)
            values.update({f"images/{k}": (v if isinstance(v, str) else float(v)) for k, v in scored.items()})
        return values

    def _draw(self, trainer, pl_module, net, datamodule, step: int) -> None:
        import matplotlib.pyplot as plt

        g = torch.Generator().manual_seed(self.seed)
        samples = datamodule.images(decoder_means(net, self.grid, g).float().cpu())
        val = datamodule.val_x[: max(8, self.n_interpolations * 2)]
        n_rec = min(8, len(val))
        rec = datamodule.images(reconstruct(net, val[:n_rec].to(pl_module.device)).float().cpu())
        title = f"step {step}"
        figures = []
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(image_grid(samples).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"samples g(z), z ~ p(z), {title}")
        ax.axis("off")
        figures.append(("images/samples", fig))
        fig, ax = plt.subplots(figsize=(8, 2.4))
        pair = torch.cat([datamodule.images(val[:n_rec]), rec])
        ax.imshow(image_grid(pair, rows=2).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"held-out images (top) and reconstructions (bottom), {title}")
        ax.axis("off")
        figures.append(("images/reconstructions", fig))
        if not net.enumerable and len(val) >= 2:
            p = min(self.n_interpolations, len(val) // 2)
            a, b = val[:p].to(pl_module.device), val[p: 2 * p].to(pl_module.device)
            path = interpolate(net, a, b, self.interpolation_steps).float().cpu()  # (P, S, D)
            fig, ax = plt.subplots(figsize=(8, 1.2 * p + 0.6))
            ax.imshow(image_grid(datamodule.images(path.reshape(-1, path.shape[-1])), rows=p).squeeze(-1).numpy(),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"latent interpolations between held-out images, {title}")
            ax.axis("off")
            figures.append(("images/interpolations", fig))
        for tag, fig in figures:
            log_figure(trainer, pl_module, tag, [fig], step)

    # --- hooks ---

    def on_train_start(self, trainer, pl_module) -> None:
        self.cadence.start()

    def _applies(self, trainer, pl_module) -> bool:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "image_shape", None) is None:
            return False
        if members(pl_module) is not None:
            if not self._said_ensemble:
                _warn("image_quality measures single runs; an ensemble's members are skipped "
                      "(run the members as single runs for image scores)")
                self._said_ensemble = True
            return False
        return True

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._applies(trainer, pl_module) or not self.cadence.due(trainer):
            return
        datamodule, net = trainer.datamodule, pl_module.net
        step = max(int(trainer.global_step) - 1, 0)
        values = self.compute(net, datamodule)
        sha = values.pop("images/feature_net_sha256", None)
        for k, v in values.items():
            pl_module.log(k, v, sync_dist=True)  # the same on every rank (same weights, same seed)
        dirs = _run_dirs(trainer, pl_module)
        if dirs is not None:
            row = {"step": step, **{k.removeprefix("images/"): v for k, v in values.items()}}
            if sha is not None:
                row["feature_net_sha256"] = sha
                writer = _tb(trainer)
                if writer is not None:
                    writer.add_text("images/feature_net_sha256", str(sha), step)
            dirs[0].mkdir(parents=True, exist_ok=True)
            with open(Path(dirs[0]) / SCORES_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.figures and trainer.is_global_zero:
            self._draw(trainer, pl_module, net, datamodule, step)
