"""The image experiments' tables, from a sweep's runs (``make images`` prints them).

    python -m lightning_vae.image_report [logs/sweeps/images] [--figure samples.png] [--seed 0]

For each experiment (a directory of ``seed_<s>`` runs) and seed: the final row of the
run's ``image_quality.jsonl`` (``lightning_vae.image_callbacks.ImageQuality``), the final
training loss, the smallest decoder std over the data scale and the step at which the
likelihood std first fell below 1e-2 of it (``decoder/collapse_step``). Then the mean and
standard error over seeds. A run without the file (not an image run, or cut off before
its first scoring) is listed as missing, never dropped silently. ``--figure`` draws each
experiment's final sample grid (of run ``--seed``) side by side in one PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lightning_vae.image_callbacks import SCORES_FILE
from lightning_vae.runs import read_scalars

COLUMNS = ("train_loss", "min_std_ratio", "collapse_step", "dist_mean", "dist_p95", "coverage", "sharpness",
           "fd", "kid", "precision", "recall")


def run_row(run: Path) -> dict[str, float] | None:
    """One run's final numbers (None without an ``image_quality.jsonl``)."""
    scores = run / SCORES_FILE
    if not scores.is_file():
        return None
    lines = [line for line in scores.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    row: dict = json.loads(lines[-1])
    s = read_scalars(run)
    row["train_loss"] = s["train/loss"][-1][1] if "train/loss" in s else math.nan
    row["min_std_ratio"] = min(v for _, v in s["decoder/min_std_ratio"]) if "decoder/min_std_ratio" in s else math.nan
    row["collapse_step"] = s["decoder/collapse_step"][-1][1] if "decoder/collapse_step" in s else math.nan
    return row


def _mean_se(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.4g}"
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{m:.4g} ± {se:.2g}"


def table(root: Path) -> str:
    """The markdown table of every experiment under ``root``: one line per seed and one of
    mean ± standard error; and the feature networks' hashes."""
    lines = ["| experiment | seed | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    hashes: dict[str, set[str]] = {}
    for exp in sorted(p for p in root.iterdir() if p.is_dir()):
        # seed_<n> run directories only (a config named seed_spread is not one).
        seeds = sorted((p for p in exp.glob("seed_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        rows = []
        for run in seeds:
            row = run_row(run)
            if row is None:
                lines.append(f"| {exp.name} | {run.name[5:]} | missing (no {SCORES_FILE}) |")
                continue
            rows.append(row)
            hashes.setdefault(exp.name, set()).add(str(row.get("feature_net_sha256", "-"))[:12])
            lines.append(f"| {exp.name} | {run.name[5:]} | "
                         + " | ".join(f"{row.get(c, math.nan):.4g}" for c in COLUMNS) + " |")
        if len(rows) > 1:
            lines.append(f"| **{exp.name}** | mean ± se | "
                         + " | ".join(_mean_se([r.get(c, math.nan) for r in rows]) for c in COLUMNS) + " |")
    lines.append("")
    lines += [f"feature net sha256 (first 12) of {name}: {', '.join(sorted(h))}" for name, h in hashes.items()]
    return "\n".join(lines)


def figure(root: Path, path: Path, seed: int = 0) -> list[str]:
    """Each experiment's last ``images_samples`` grid of run ``seed_<seed>``, side by side,
    written to ``path``; returns the experiments drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    found = []
    for exp in sorted(p for p in root.iterdir() if p.is_dir()):
        grids = sorted((exp / f"seed_{seed}" / "figures").glob("images_samples_step*.png"))
        if grids:
            found.append((exp.name, grids[-1]))
    if not found:
        raise ValueError(f"{root}: no seed_{seed}/figures/images_samples_step*.png; expected an image sweep's "
                         f"directory (make images)")
    cols = min(3, len(found))
    rows = -(-len(found) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, grid) in zip(axes.flat, found):
        image = matplotlib.image.imread(grid)
        h, w = image.shape[:2]
        ax.imshow(image[int(0.11 * h): int(0.9 * h), int(0.12 * w): int(0.9 * w)])  # the grid, not its title
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"samples g(z), z ~ p(z), seed {seed}, end of training", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [name for name, _ in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_vae.image_report", description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="logs/sweeps/images", help="a sweep's directory")
    parser.add_argument("--figure", type=Path, default=None, help="also draw the sample grids into this PNG")
    parser.add_argument("--seed", type=int, default=0, help="the seed whose grids --figure draws")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"image_report: {root} is not a directory; expected a sweep's directory such as "
              f"logs/sweeps/images (make images writes it)", file=sys.stderr)
        return 2
    print(table(root))
    if args.figure is not None:
        try:
            drawn = figure(root, args.figure, args.seed)
        except ValueError as e:
            print(f"image_report: {e}", file=sys.stderr)
            return 2
        print(f"figure: {args.figure} ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
