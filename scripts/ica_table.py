"""The linear-ICA tables and figures of the README (Spread EM for linear ICA) from a sweep:

    python scripts/ica_table.py logs/sweeps/ica_gamma --by gamma --figure docs/figures/ica_gamma.png
    python scripts/ica_table.py logs/sweeps/ica_n --by n --figure docs/figures/ica_n.png

Every run under the sweep directory that finished writes ``ica_result.json`` (its method,
settings and each repeat's final error, ``lightning_vae/ica_em.py``). Runs are grouped by
method and by the ``--by`` setting (``gamma`` or ``n``); a group's errors are those of all
its repeats (over every seed of the sweep), and the table gives their mean, standard error
(std / sqrt(count)) and median, with the count. The figure has two panels: the final error
(mean +- standard error, and the median, log scale) against the setting for standard and
spread EM, and the error over the iterations of every run (``ica/error``, the mean over repeats, from the
event files; ``--trajectory ica/error_median``: the median).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_vae.runs import read_scalars  # noqa: E402

METHODS = ("standard", "spread")


def results(root: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(root.rglob("ica_result.json")):
        if ".incomplete-" in str(path):
            continue
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "errors" in record:
            found.append((path.parent, record))
    return found


def summary(errors: list[float]) -> dict:
    n = len(errors)
    mean = statistics.fmean(errors)
    se = statistics.stdev(errors) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "se": se, "median": statistics.median(errors), "count": n}


def grouped(found: list[tuple[Path, dict]], by: str) -> dict[tuple[str, float], dict]:
    groups: dict[tuple[str, float], dict] = {}
    for run, record in found:
        key = (record["method"], float(record[by]))
        group = groups.setdefault(key, {"errors": [], "initial": [], "runs": []})
        group["errors"] += record["errors"]
        group["initial"] += record.get("initial_errors") or []
        group["runs"].append(run)
    return groups


def _cell(group: dict | None) -> str:
    if group is None:
        return "-"
    s = summary(group["errors"])
    return f"{s['mean']:.3f} ± {s['se']:.3f} ({s['median']:.3f})"


def table(groups: dict, by: str) -> str:
    label = {"gamma": "gamma", "n": "N"}[by]
    values = sorted({v for _, v in groups})
    lines = [f"| {label} | standard EM: error ± se (median) | spread EM: error ± se (median) | repeats | "
             f"initial error |", "|---|---|---|---|---|"]
    for v in values:
        std, spr = groups.get(("standard", v)), groups.get(("spread", v))
        count = max((len(g["errors"]) for g in (std, spr) if g), default=0)
        initial = next((g["initial"] for g in (std, spr) if g and g["initial"]), [])
        init = f"{statistics.fmean(initial):.3f}" if initial else "-"
        shown = f"{v:g}" if by == "gamma" else f"{int(v)}"
        lines.append(f"| {shown} | {_cell(std)} | {_cell(spr)} | {count} | {init} |")
    return "\n".join(lines)


def figure(groups: dict, by: str, path: Path, trajectory: str = "ica/error") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_vae.report import save_figure

    values = sorted({v for _, v in groups})
    # gamma = 0 on a log axis: drawn one decade below the smallest positive value, labelled 0.
    positive = [v for v in values if v > 0]
    zero_at = (min(positive) / 10) if positive else 1e-4

    def at(v: float) -> float:
        return zero_at if v == 0 else v

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"standard": "tab:red", "spread": "tab:blue"}
    for method in METHODS:
        xs, means, ses, medians = [], [], [], []
        for v in values:
            g = groups.get((method, v))
            if g:
                s = summary(g["errors"])
                xs.append(at(v)), means.append(s["mean"]), ses.append(s["se"]), medians.append(s["median"])
        if xs:
            left.errorbar(xs, means, yerr=ses, marker="o", capsize=3, color=colours[method],
                          label=f"{method} EM: mean ± s.e.")
            left.plot(xs, medians, marker="o", markerfacecolor="none", linestyle=":", color=colours[method],
                      label=f"{method} EM: median")
    left.set_xscale("log"), left.set_yscale("log")
    if by == "gamma" and 0 in values:
        ticks = [at(v) for v in values]
        left.set_xticks(ticks, [("0" if v == 0 else f"{v:g}") for v in values])
        left.minorticks_off()
    left.set_xlabel("observation noise gamma" if by == "gamma" else "number of points N")
    left.set_ylabel("final error over repeats")
    left.set_title("error after the last EM iteration")
    left.legend(fontsize=7, framealpha=0.8)
    cmap = plt.get_cmap("viridis")
    for (method, v), g in sorted(groups.items()):
        colour = cmap(values.index(v) / max(1, len(values) - 1))
        for run in g["runs"]:
            series = read_scalars(run).get(trajectory, [])
            if series:
                label = (f"{'gamma' if by == 'gamma' else 'N'} = {v:g}" if method == "spread" else None)
                right.plot([s for s, _ in series], [e for _, e in series], color=colour,
                           linestyle="-" if method == "spread" else "--", label=label)
    right.set_yscale("log")
    right.set_xlabel("EM iteration")
    right.set_ylabel(f"error, {'median' if trajectory.endswith('median') else 'mean'} over repeats")
    right.set_title("solid: spread EM, dashed: standard EM")
    right.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="a sweep's directory, e.g. logs/sweeps/ica_gamma")
    ap.add_argument("--by", choices=("gamma", "n"), required=True, help="the swept setting")
    ap.add_argument("--figure", type=Path, default=None, help="write the figure here (PNG)")
    ap.add_argument("--trajectory", choices=("ica/error", "ica/error_median"), default="ica/error",
                    help="the right panel's statistic over repeats (the median: where one repeat's "
                         "error dominates the mean)")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        ap.error(f"{args.root} is not a directory; expected a sweep's directory, e.g. logs/sweeps/ica_gamma")
    found = results(args.root)
    if not found:
        ap.error(f"no ica_result.json under {args.root}; expected the runs of an ICA sweep (make ica)")
    groups = grouped(found, args.by)
    print(table(groups, args.by))
    if args.figure is not None:
        print(f"figure: {figure(groups, args.by, args.figure, args.trajectory)}")


if __name__ == "__main__":
    main()
