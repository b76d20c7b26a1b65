"""The learned noise directions of an image run as images (after the paper's figure 2d):

    python scripts/learned_spread_directions.py RUN_DIR [--out PATH] [--n 20]

The principal directions of L L^T (the left singular vectors of L, largest first), each
shown as an image in its own symmetric colour scale, titled with its variance (eigenvalue)
and, where the data have an exact tangent space, the share of it along the manifold; the
suptitle gives the tangent fraction of the whole of L L^T.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_vae.report import save_figure  # noqa: E402
from lightning_vae.runs import final_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/figures/learned_spread_fading.png"))
    ap.add_argument("--n", type=int, default=20, help="directions shown (the largest)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_vae.data import ManifoldDataModule
    from lightning_vae.model import VAE

    ckpt_path = final_checkpoint(args.run)
    model = VAE.load_from_checkpoint(ckpt_path, map_location="cpu")
    if model.spread is None:
        raise SystemExit(f"{args.run}: not a learned-spread run (its objective's kernel is fixed)")
    dm = ManifoldDataModule.load_from_checkpoint(ckpt_path)
    dm.setup()
    shape = dm.image_shape
    if shape is None:
        raise SystemExit(f"{args.run}: not image data")
    factor = model.spread.factor.detach().double()
    u, s, _ = torch.linalg.svd(factor, full_matrices=False)  # L = U S V^T: directions U, variances S^2
    variance = s.square()
    tangent = dm.manifold.tangent(dm.train_x[:512]) if getattr(dm.manifold, "has_tangent", False) else None
    n = min(args.n, u.shape[1])
    cols = min(10, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = u[:, i].reshape(shape)[0]  # the first channel
        limit = float(img.abs().max())
        ax.imshow(img, cmap="RdBu_r", vmin=-limit, vmax=limit)
        title = f"var {variance[i]:.3g}"
        if tangent is not None:
            share = float((tangent.transpose(1, 2) @ u[:, i]).square().sum(-1).mean())
            title += f"\nalong {share:.2f}"
        ax.set_title(title, fontsize=7)
    head = f"learned noise directions of {args.run.name} (rank {u.shape[1]}, budget {model.spread.budget:g})"
    if tangent is not None:
        head += f"; share of L L^T along the manifold: {model.spread.alignment(tangent)['tangent_fraction']:.3f}"
    fig.suptitle(head, fontsize=9)
    print(f"wrote {save_figure(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
