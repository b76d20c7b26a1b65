"""A report of many runs: ``python -m lightning_vae report <logs dir or sweep dir> [--out DIR]``.

Collects every run directory below the given folder (a folder holding TensorBoard event
files and a ``config.yaml``), read with TensorBoard's own ``EventAccumulator``, and groups
runs by configuration: the run's folder relative to the root, without its last part
(``sweeps/s/noise_std=0.3/seed_4`` -> ``sweeps/s/noise_std=0.3``; ``seed_spread/version_2`` ->
``seed_spread``). It writes into ``--out`` (default ``<root>/report``):

- ``report.md``: per configuration, the mean ± std over seeds of the final metrics, and how
  many seeds collapsed (decoder variance) or diverged (``lightning_vae.lab.table``);
- ``loss.png``: train/loss against the optimizer step, one line per configuration (the mean
  over seeds, a band from the lowest to the highest seed): the seed's ELBO-vs-spread plot;
- ``decoder_std.png``: the smallest decoder std over the data scale against the step, log axis;
- ``samples.png``: each configuration's final ``samples/scatter`` figure (its first seed);
- ``metric_vs_sigma.png``: final MMD^2, distance to the manifold and held-out log p(x) against
  the spread noise level, mean ± std over seeds (ELBO runs as a dashed line at no noise);
  only when the runs have more than one noise level.

Refuses to overwrite: ``--out`` must not hold a report already.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
from pathlib import Path

import yaml

from lightning_vae.lab import final_values, table
from lightning_vae.report import read_scalars


def find_runs(root: Path) -> list[Path]:
    """Run directories below ``root``: an event file and a ``config.yaml`` side by side. An
    ensemble's members (``<run>/seed_<s>/``) are runs like single ones; the ensemble's own
    directory (its ``ensemble_summary.json``) holds only their aggregate, and is skipped."""
    runs = {p.parent for p in root.rglob("events.out.tfevents.*") if (p.parent / "config.yaml").is_file()}
    return sorted(r for r in runs if ".incomplete-" not in str(r)
                  and not (r / "ensemble_summary.json").is_file())


def group_of(run: Path, root: Path) -> str:
    rel = run.relative_to(root)
    return str(rel.parent) if rel.parent != Path(".") else rel.name


def noise_level(run: Path) -> float | None:
    """The spread noise std of a run (a schedule: its end value), or None for the ELBO."""
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    objective = (cfg.get("model") or {}).get("objective") or {}
    if "Spread" not in str(objective.get("class_path", "")):
        return None
    noise_std = (objective.get("init_args") or {}).get("noise_std")
    if isinstance(noise_std, dict):  # a schedule
        noise_std = (noise_std.get("init_args") or {}).get("end", noise_std.get("init_args", {}).get("value"))
    return float(noise_std) if noise_std is not None else None


def _curves(groups: dict[str, list[dict]], tag: str):
    """Per group: steps, mean, min, max of a scalar over its seeds (common steps only)."""
    out = {}
    for name, runs in groups.items():
        series = [dict(r["scalars"][tag]) for r in runs if tag in r["scalars"]]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series)))
        values = [[s[t] for s in series] for t in steps]
        finite = [[v for v in vs if math.isfinite(v)] for vs in values]
        keep = [i for i, vs in enumerate(finite) if vs]
        out[name] = ([steps[i] for i in keep], [statistics.mean(finite[i]) for i in keep],
                     [min(finite[i]) for i in keep], [max(finite[i]) for i in keep], len(series))
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


def _line_plot(groups, tag: str, ylabel: str, path: Path, log: bool = False, symlog: bool = False) -> bool:
    plt = _pyplot()
    curves = _curves(groups, tag)
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, mean, lo, hi, n) in curves.items():
        (line,) = ax.plot(steps, mean, label=f"{name} ({n} seeds)")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    if symlog:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _samples_plot(groups, path: Path) -> bool:
    plt = _pyplot()
    import matplotlib.image as mpimg
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = {}
    for name, runs in groups.items():
        acc = EventAccumulator(str(runs[0]["run"]), size_guidance={"images": 1})
        acc.Reload()
        if "samples/scatter" in acc.Tags()["images"]:
            png = acc.Images("samples/scatter")[-1].encoded_image_string
            images[name] = mpimg.imread(io.BytesIO(png), format="png")
    if not images:
        return False
    cols = min(3, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, images.items()):
        ax.imshow(img)
        ax.set_title(name, fontsize=8)
    return _save(fig, path)


def _sigma_plot(groups, path: Path) -> bool:
    plt = _pyplot()

    by_sigma: dict[float | None, list[dict]] = {}
    for runs in groups.values():
        for r in runs:
            by_sigma.setdefault(r["sigma"], []).append(r)
    sigmas = sorted(s for s in by_sigma if s is not None)
    if len(sigmas) < 2:
        return False
    metrics = [("quality/mmd", "MMD^2"), ("quality/dist_mean", "mean distance to manifold"),
               ("val/log_px", "held-out log p(x)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, (tag, label) in zip(axes, metrics):
        means, stds = [], []
        for s in sigmas:
            vals = [r["final"].get(tag, math.nan) for r in by_sigma[s]]
            vals = [v for v in vals if math.isfinite(v)]
            means.append(statistics.mean(vals) if vals else math.nan)
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.errorbar(sigmas, means, yerr=stds, marker="o", capsize=3, label="spread")
        elbo = [r["final"].get(tag, math.nan) for r in by_sigma.get(None, [])]
        elbo = [v for v in elbo if math.isfinite(v)]
        if elbo:
            ax.axhline(statistics.mean(elbo), color="k", linestyle="--", label="ELBO (no noise)")
        ax.set_xscale("log")
        ax.set_xlabel("spread noise std sigma")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(root: Path, out: Path) -> dict[str, Path]:
    """Collect the runs under ``root``; write the report into ``out``; return the files."""
    runs = find_runs(root)
    if not runs:
        raise SystemExit(f"report: no runs under {root}; expected run directories with TensorBoard "
                         f"event files and a config.yaml")
    walls = {}  # a sweep's manifest records each run's wall time
    for manifest in root.rglob("sweep.json"):
        for row in json.loads(manifest.read_text()).get("runs", {}).values():
            walls[Path(row["run"]).resolve()] = row.get("wall_s", math.nan)
    groups: dict[str, list[dict]] = {}
    for run in runs:
        scalars = read_scalars(run)  # the event files, read once per run
        groups.setdefault(group_of(run, root), []).append(
            {"run": run, "scalars": scalars, "final": final_values(run, scalars), "sigma": noise_level(run),
             "wall_s": walls.get(run.resolve(), math.nan)})
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: [{**r["final"], "rc": 0, "wall_s": r["wall_s"]} for r in rs] for name, rs in groups.items()}
    files = {"report.md": out / "report.md"}
    made = {
        "loss.png": _line_plot(groups, "train/loss", "train/loss", out / "loss.png", symlog=True),
        "decoder_std.png": _line_plot(groups, "decoder/min_std_ratio", "min decoder std / data scale",
                                      out / "decoder_std.png", log=True),
        "samples.png": _samples_plot(groups, out / "samples.png"),
        "metric_vs_sigma.png": _sigma_plot(groups, out / "metric_vs_sigma.png"),
    }
    files.update({name: out / name for name, ok in made.items() if ok})
    lines = [f"# Report: {root}", "", f"{len(runs)} runs in {len(groups)} configurations "
             "(mean ± std over seeds; wall time from a sweep's manifest, where there is one).", "",
             table(rows, label="configuration"), ""]
    lines += [f"![{name}]({name})" for name in files if name.endswith(".png")]
    files["report.md"].write_text("\n".join(lines) + "\n")
    return files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lightning_vae report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a logs dir or a sweep dir")
    ap.add_argument("--out", default=None, help="report folder (default <root>/report)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise SystemExit(f"report: root must be an existing folder of runs, got {args.root!r}")
    out = Path(args.out) if args.out else root / "report"
    if (out / "report.md").exists():
        raise SystemExit(f"report: {out / 'report.md'} exists; expected a new --out folder")
    files = write_report(root, out)
    print("\n".join(f"{name}: {path}" for name, path in files.items()))
