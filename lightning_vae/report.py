"""A report of many runs: ``python -m lightning_vae report <logs dir or sweep dir> [--out DIR]``.

Collects every run below the folder (``runs.find_runs``: single runs, ensemble members and
sweep runs alike; not evaluations or runs a sweep moved aside), read with TensorBoard's own
``EventAccumulator``, and groups them by configuration (``runs.group_runs``: equal configs
up to the seed and where they were written, named by their common folder). It writes into
``--out`` (default ``<root>/report``):

- ``report.md``: per configuration, the mean ± std over seeds of the final metrics, how
  many seeds collapsed (decoder variance) or diverged, and, for data with modes, how many
  recovered every mode (``runs.table``, the sweep's table);
- ``results.csv``: one row per run: configuration, the settings that vary between the runs
  (a sweep's grid), seed, status, wall time and every final scalar;
- ``loss.png``: train/loss against the optimizer step, per configuration the median over
  seeds with a band from the lowest to the highest seed;
- ``decoder_std.png``: per axis, the std of the likelihood being trained over the data scale
  (median and band over seeds), the collapse threshold drawn: the ELBO's crosses it, spread's
  cannot;
- ``samples.png``: each configuration's final ``samples/scatter`` figure (its first seed);
- ``metric_vs_sigma.png``: final MMD^2, distance to the manifold and held-out log p(x) against
  the spread noise level, median and band over seeds (the ELBO as a dashed line at no
  noise); only when the runs have more than one noise level.

Refuses to overwrite: ``--out`` must not hold a report already.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from pathlib import Path

from lightning_vae import runs as runs_io


def noise_level(run: Path) -> float | None:
    """The spread noise std of a run (a schedule: its end value), or None for the ELBO."""
    cfg = runs_io.config_of(run)
    objective = (cfg.get("model") or {}).get("objective") or {}
    if "Spread" not in str(objective.get("class_path", "")):
        return None
    noise_std = (objective.get("init_args") or {}).get("noise_std")
    if isinstance(noise_std, dict):  # a schedule
        noise_std = (noise_std.get("init_args") or {}).get("end", noise_std.get("init_args", {}).get("value"))
    return float(noise_std) if noise_std is not None else None


def _seed(run: Path) -> int | None:
    seed = runs_io.config_of(run).get("seed_everything")
    return seed if isinstance(seed, int) else None


def _final(row: dict) -> dict:
    """A row's final values, ``{}`` where it has none (a run that never finished, a foreign row)."""
    final = row.get("final") if isinstance(row, dict) else None
    return final if isinstance(final, dict) else {}


def _scalars(row: dict) -> dict:
    scalars = row.get("scalars") if isinstance(row, dict) else None
    return scalars if isinstance(scalars, dict) else {}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _band(values: list[float]) -> tuple[float, float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite), min(finite), max(finite)


def _curves(groups: dict[str, list[dict]], tag: str):
    """Per group: steps, median, min, max of a scalar over its seeds (common steps only)."""
    out = {}
    for name, runs in groups.items():
        series = [dict(_scalars(r)[tag]) for r in runs if tag in _scalars(r)]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series)))
        keep = [t for t in steps if any(math.isfinite(s[t]) for s in series)]
        bands = [_band([s[t] for s in series]) for t in keep]
        out[name] = (keep, [b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands], len(series))
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder made if needed) and close it."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return Path(path)


def _save(fig, path: Path) -> bool:
    save_figure(fig, path)
    return True


def _line_plot(groups, tag: str, ylabel: str, path: Path) -> bool:
    plt = _pyplot()
    curves = _curves(groups, tag)
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, mid, lo, hi, n) in curves.items():
        (line,) = ax.plot(steps, mid, label=f"{name} ({n} seeds)")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{ylabel} (median, band: min-max over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _std_axes(groups) -> list[str]:
    """The axes with per-axis likelihood-std scalars (``decoder/likelihood_std_ratio_<a>``)."""
    prefix = "decoder/likelihood_std_ratio_"
    axes = {t[len(prefix):] for rs in groups.values() for r in rs for t in _scalars(r) if t.startswith(prefix)}
    return sorted(axes, key=lambda a: ("xyz".index(a) if a in "xyz" else 3, a))[:4]


def _std_plot(groups, path: Path, threshold: float) -> bool:
    """Per axis (or the smallest over axes where runs log no per-axis values): the
    likelihood std over the data scale, median and band over seeds, threshold drawn."""
    plt = _pyplot()
    axes = _std_axes(groups)
    panels = [(f"decoder/likelihood_std_ratio_{a}", f"axis {a}") for a in axes] or \
             [("decoder/min_likelihood_std_ratio", "smallest over axes and states")]
    curves = [(_curves(groups, tag), title) for tag, title in panels]
    if not any(c for c, _ in curves):
        return False
    fig, axs = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False, sharey=True)
    for ax, (found, title) in zip(axs[0], curves):
        for name, (steps, mid, lo, hi, n) in found.items():
            (line,) = ax.plot(steps, mid, label=f"{name} ({n})")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(threshold, color="k", linestyle=":", linewidth=1)
        ax.annotate(f"collapse threshold {threshold:g}", (0.02, threshold), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"likelihood std / data scale, {title}", fontsize=9)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("median, band: min-max over seeds")
    axs[0][-1].legend(fontsize=7)
    return _save(fig, path)


def _samples_plot(groups, path: Path) -> bool:
    plt = _pyplot()
    import matplotlib.image as mpimg
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = {}
    for name, runs in groups.items():
        if not runs or not isinstance(runs[0], dict) or not runs[0].get("run"):
            continue
        try:
            acc = EventAccumulator(str(runs[0]["run"]), size_guidance={"images": 1})
            acc.Reload()
            if "samples/scatter" in acc.Tags()["images"]:
                png = acc.Images("samples/scatter")[-1].encoded_image_string
                images[name] = mpimg.imread(io.BytesIO(png), format="png")
        except Exception:  # noqa: BLE001 - unreadable event files or image: that run has no panel
            continue
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
            by_sigma.setdefault(r.get("sigma"), []).append(r)
    sigmas = sorted(s for s in by_sigma if s is not None)
    if len(sigmas) < 2:
        return False
    metrics = [("quality/mmd", "MMD^2"), ("quality/dist_mean", "mean distance to manifold"),
               ("val/log_px", "held-out log p(x)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, (tag, label) in zip(axes, metrics):
        points = [(s, [_number(_final(r).get(tag)) for r in by_sigma[s]]) for s in sigmas]
        points = [(s, _band(v)) for s, v in points if any(math.isfinite(x) for x in v)]
        if points:
            xs, bands = zip(*points)
            mid = [b[0] for b in bands]
            ax.errorbar(xs, mid, yerr=[[m - b[1] for m, b in zip(mid, bands)], [b[2] - m for m, b in zip(mid, bands)]],
                        marker="o", capsize=3, label="spread (median, min-max)")
        elbo = [v for v in (_number(_final(r).get(tag)) for r in by_sigma.get(None, [])) if math.isfinite(v)]
        if elbo:
            ax.axhline(statistics.median(elbo), color="k", linestyle="--", label="ELBO (no noise), median")
        ax.set_xscale("log")
        ax.set_xlabel("spread noise std sigma")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def collect(root: Path) -> dict[str, list[dict]]:
    """The runs under ``root`` by configuration, each with its scalars, final values,
    status, wall time, seed, noise level and whether it recovered the data's modes."""
    found = runs_io.find_runs(root)
    if not found:
        raise SystemExit(f"report: no runs under {root}; expected run directories with TensorBoard "
                         f"event files and a config.yaml")
    groups: dict[str, list[dict]] = {}
    for name, paths in runs_io.group_runs(found, root).items():
        for run in paths:
            scalars = runs_io.read_scalars(run)  # the event files, read once per run
            final = runs_io.final_values(run, scalars)
            status = runs_io.status_of(run) or {}  # a foreign or truncated record: none
            groups.setdefault(name, []).append({
                "run": run, "scalars": scalars, "final": final, "sigma": noise_level(run),
                "seed": _seed(run), "wall_s": status.get("wall_s", math.nan),
                "status": str(status.get("status", "diverged" if final.get("diverged") else "finished")),
                "both_modes": runs_io.modes_recovered(run, final)})
    return groups


def write_csv(groups: dict[str, list[dict]], path: Path, root: Path) -> None:
    """``results.csv``: one row per run (see the module docstring). A row's grid values are
    its ``grid`` (a sweep's point) where it has one, else the configuration keys that vary
    between the runs. A partial or foreign row (no ``final``, or one without ``collapsed``,
    no seed, not a dict) gets empty cells for what it lacks. Written atomically."""
    rows = [(name, r) for name, rs in groups.items() for r in rs if isinstance(r, dict)]
    every = [r for _, r in rows]

    def grid_of(r: dict) -> dict:
        return r["grid"] if isinstance(r.get("grid"), dict) else {}

    if any("grid" in r for r in every):
        grid = list(dict.fromkeys(k for r in every for k in grid_of(r)))
        values = [grid_of(r) for r in every]
    else:
        found = [Path(r["run"]) for r in every if r.get("run")]
        grid = runs_io.varying_keys(found)
        values = [runs_io.configuration(Path(r["run"])) if r.get("run") else {} for r in every]
    tags = sorted({k for r in every for k, v in _final(r).items()
                   if not isinstance(v, bool) and k not in ("collapsed", "diverged")})
    head = ["configuration", "run", *grid, "seed", "status", "wall_s", "collapsed", "diverged", "both_modes", *tags]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for (name, r), cfg in zip(rows, values):
            cells = [json.dumps(cfg.get(k), default=str) if isinstance(cfg.get(k), (dict, list)) else cfg.get(k)
                     for k in grid]
            run = Path(r["run"]) if r.get("run") else None
            where = "" if run is None else str(run.relative_to(root)) if run.is_relative_to(root) else str(run)
            final, both = _final(r), r.get("both_modes")
            writer.writerow([name, where, *cells, r.get("seed", ""), r.get("status", ""), r.get("wall_s", ""),
                             final.get("collapsed", ""), final.get("diverged", ""), "" if both is None else both,
                             *[final.get(t, "") for t in tags]])
    tmp.replace(path)


def write_report(root: Path, out: Path, threshold: float = 1e-2) -> dict[str, Path]:
    """Collect the runs under ``root``; write the report into ``out``; return the files.
    ``threshold``: the collapse threshold drawn (``decoder_monitor.collapse_ratio``)."""
    groups = collect(root)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.md": out / "report.md", "results.csv": out / "results.csv"}
    write_csv(groups, files["results.csv"], root)
    made = {
        "loss.png": _line_plot(groups, "train/loss", "train/loss", out / "loss.png"),
        "decoder_std.png": _std_plot(groups, out / "decoder_std.png", threshold),
        "samples.png": _samples_plot(groups, out / "samples.png"),
        "metric_vs_sigma.png": _sigma_plot(groups, out / "metric_vs_sigma.png"),
    }
    files.update({name: out / name for name, ok in made.items() if ok})
    n_runs = sum(len(rs) for rs in groups.values())
    lines = [f"# Report: {root}", "", f"{n_runs} runs in {len(groups)} configurations "
             "(mean ± std over seeds; wall time where a sweep recorded it). One row per run: "
             "[results.csv](results.csv).", "", runs_io.table(groups, label="configuration"), ""]
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
