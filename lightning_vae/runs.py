"""Reading runs back: a run's scalars, final values, checkpoint and summary; the runs below
a folder, grouped by configuration; the table of final metrics over seeds.

A *run* is a directory holding TensorBoard event files and a ``config.yaml``: a single
``fit``, or one member of a vectorised ensemble (``<ensemble run>/seed_<s>/``, written by
``lightning_vae.ensemble``), which holds its single run's scalars tag for tag. The sweep
(``lightning_vae/sweep.py``) and the report (``lightning_vae/report.py``) read runs only
through this module, so their tables are the same code.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import statistics
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and Lightning load on first use: planning a sweep needs neither
    import torch

STATUS_FILE = "sweep_status.json"  # a sweep's record of how a run ended (lightning_vae/sweep.py)
# The run's own record of how its fit ended, written by the fit process itself (rank zero,
# atomically; lightning_vae.callbacks.RunOutcome): {"outcome": "finished" | "interrupted" |
# "failed", "signal": "SIGTERM" | "SIGINT" | null, "global_step": int, "checkpoint": the
# checkpoint to resume from or null, "error": a line or null}. A run without one did not
# end under its own control (killed, or it never started).
OUTCOME_FILE = "outcome.json"
EVAL_STAGES = ("validate", "test", "predict")  # evaluations write <run>/<stage>/version_N
# Config keys that say where and how verbosely a run was written, not what it computed:
# runs that differ only in these (and the seed) are seeds of one configuration.
NOT_CONFIGURATION = ("seed_everything", "ckpt_path", "trainer.logger", "trainer.default_root_dir",
                     "trainer.enable_progress_bar", "trainer.enable_model_summary", "model.seeds",
                     "data.member_seeds")

# (tag, column heading, format): the final value of each tag, the metrics that matter.
COLUMNS = [
    ("train/loss", "train loss", "{:.3f}"),
    ("val/log_px", "val log p(x)", "{:.3f}"),
    ("quality/mmd", "MMD^2", "{:.4f}"),
    ("quality/dist_mean", "dist mean", "{:.3f}"),
    ("quality/dist_p95", "dist p95", "{:.3f}"),
    ("decoder/min_likelihood_std_ratio", "min lik. std / data", "{:.3g}"),
]


# --- one run ------------------------------------------------------------------------------

def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's TensorBoard event files: tag -> [(step, value), ...],
    in the order written (files in name order, i.e. by creation time: for a run that a
    sweep resumed after a kill, the events before the resume come first, and a step logged
    twice appears twice, the resumed run's value last)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def final_values(run_dir: Path, scalars: dict | None = None) -> dict:
    """Final value of each scalar tag of a run; ``collapsed`` and ``diverged`` flags.
    ``scalars``: the run's ``read_scalars`` when the caller has already read them."""
    scalars = read_scalars(run_dir) if scalars is None else scalars
    out = {tag: series[-1][1] for tag, series in scalars.items() if series}
    out["collapsed"] = "decoder/collapse_step" in scalars
    out["diverged"] = bool(out.get("hp/diverged", 0)) or not math.isfinite(out.get("train/loss", 0.0))
    return out


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
    from lightning_vae.callbacks import axis_name

    dim = loc.shape[1]
    return {"loc": {f"z{k}": [float(v) for v in loc[k]] for k in range(len(loc))},
            "std": {f"z{k}": {axis_name(d, dim): float(scale[k, d]) for d in range(dim)}
                    for k in range(len(scale))}}


def summarize(run_dir: str | Path) -> dict:
    """Numbers that tell a single run's story: final loss, decoder params, quality, collapse."""
    import torch

    from lightning_vae.callbacks import SampleQuality

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
    import torch

    locs = torch.tensor([v for v in summary["loc"].values()])  # (K, D)
    d = torch.cdist(centres, locs)  # (C, K)
    hit_each_centre = bool((d.min(dim=1).values < tol).all())
    return hit_each_centre and summary.get("quality/mode_imbalance", math.inf) <= max_imbalance


def modes_recovered(run_dir: Path, final: dict) -> bool | None:
    """Whether a run on data with known modes (the seed's two clusters) recovered each of
    them (``recovered_both_modes``), or None where the data has no modes or the run no
    decoder means to read: an ensemble member's from its ensemble's summary, a single run's
    from its final checkpoint."""
    summary = run_dir.parent / "ensemble_summary.json"
    if summary.is_file():
        seed = run_dir.name.removeprefix("seed_")
        for row in json.loads(summary.read_text()):
            if str(row.get("seed")) == seed:
                return row.get("both_modes")
        return None
    try:
        model, dm = _load(run_dir)
    except Exception:  # noqa: BLE001 - no (loadable) checkpoint: unknown, not an error
        return None
    import torch

    centres = getattr(dm.manifold, "centres", None)
    if centres is None or not hasattr(model, "decoder_params"):
        return None
    with torch.no_grad():
        loc, scale = model.decoder_params()
    return recovered_both_modes({**decoder_summary(loc, scale), **final}, centres)


def _record(path: Path) -> dict | None:
    """A JSON object read from ``path``, or None where it is missing, unreadable or not an
    object (a foreign or truncated file is no record)."""
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict, indent: int | None = None) -> None:
    """``record`` as JSON at ``path``, atomically (a temporary file, then a rename): a
    process killed meanwhile leaves the whole old record or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=indent, default=str))
    tmp.replace(path)


def status_of(run_dir: Path) -> dict | None:
    """A sweep's status record of a run (``sweep_status.json``), or None."""
    return _record(Path(run_dir) / STATUS_FILE)


def outcome_of(run_dir: Path) -> dict | None:
    """The run's own record of how its fit ended (``outcome.json``), or None."""
    return _record(Path(run_dir) / OUTCOME_FILE)


# --- the runs below a folder ------------------------------------------------------------

def config_of(run: Path) -> dict:
    """A run's saved ``config.yaml`` (``{}`` where unreadable), parsed once per process."""
    path = Path(run) / "config.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return copy.deepcopy(_parsed_config(str(path), stamp))


@functools.lru_cache(maxsize=4096)
def _parsed_config(path: str, stamp: int) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, ~10x faster, where built
    try:
        return yaml.load(Path(path).read_text(), Loader=loader) or {}
    except (OSError, yaml.YAMLError):
        return {}


def is_ensemble_dir(run: Path) -> bool:
    """The ensemble's own directory (its members are the runs): a config with member seeds."""
    return (run / "ensemble_summary.json").is_file() or "seeds" in (config_of(run).get("model") or {})


def find_runs(root: Path) -> list[Path]:
    """Run directories below ``root``: an event file and a ``config.yaml`` side by side.
    Skipped: an ensemble's own directory (its members are runs like single ones), an
    evaluation's (``<run>/validate/version_N``, ``<name>/test/version_N``, ...: no
    checkpoints, not a training run) and anything a sweep moved aside (``*.incomplete-*``)."""
    runs = {p.parent for p in root.rglob("events.out.tfevents.*") if (p.parent / "config.yaml").is_file()}
    keep = []
    for run in sorted(runs):
        rel = run.relative_to(root).parts if run != root else ()
        if any(".incomplete-" in part for part in rel) or is_ensemble_dir(run):
            continue
        if run.parent.name in EVAL_STAGES and not (run / "checkpoints").is_dir():
            continue  # an evaluation (cli.eval_logger_dir): it trains nothing, writes no checkpoint
        keep.append(run)
    return keep


def flat(node, prefix: str = "") -> dict:
    """A nested config as ``{"a.b.c": value}``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def configuration(run: Path) -> dict:
    """A run's config without the keys that only say where it was written, or its seed."""
    cfg = flat(config_of(run))
    return {k: v for k, v in cfg.items()
            if not any(k == drop or k.startswith(drop + ".") for drop in NOT_CONFIGURATION)}


def group_runs(runs: list[Path], root: Path) -> dict[str, list[Path]]:
    """Runs grouped by configuration (``configuration``: equal configs, any seed), each
    group named by its runs' common folder below ``root`` (``sweeps/s/noise_std=0.3`` for
    its ``seed_<s>`` runs, ``seed_spread`` for ``seed_spread/version_<n>``); groups that
    would share a name get the settings that tell them apart appended."""
    by_config: dict[str, list[Path]] = {}
    configs: dict[str, dict] = {}
    for run in runs:
        cfg = configuration(run)
        key = json.dumps(cfg, sort_keys=True, default=str)
        by_config.setdefault(key, []).append(run)
        configs[key] = cfg

    def common(paths: list[Path]) -> str:
        parts = [p.relative_to(root).parts for p in paths]
        prefix = []
        for items in zip(*parts):
            if len(set(items)) > 1:
                break
            prefix.append(items[0])
        if len(paths) == 1 or len(prefix) == len(parts[0]):
            prefix = list(parts[0][:-1]) or list(parts[0])  # one run: its folder without seed/version
        return "/".join(prefix) or root.name

    names = {key: common(paths) for key, paths in by_config.items()}
    out: dict[str, list[Path]] = {}
    for key, name in names.items():
        twins = [k for k, n in names.items() if n == name and k != key]
        if twins:
            others = [configs[k] for k in twins]
            diff = [k for k in sorted(configs[key]) if any(o.get(k) != configs[key][k] for o in others)]
            diff += [k for o in others for k in o if k not in configs[key] and k not in diff]
            name = f"{name} [{', '.join(f'{k.rsplit(chr(46), 1)[-1]}={configs[key].get(k)}' for k in diff[:3])}]"
        out[name] = sorted(by_config[key])
    return dict(sorted(out.items()))


def varying_keys(runs: list[Path]) -> list[str]:
    """The configuration keys whose values differ between the runs (a sweep's grid)."""
    configs = [configuration(r) for r in runs]
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


# --- the table --------------------------------------------------------------------------

def _stat(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if max(abs(v) for v in values) >= 1e5:  # a diverged run's numbers: no fixed-point digits
        fmt = "{:.3g}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(groups: dict[str, list[dict]], label: str = "config") -> str:
    """Markdown: one row per configuration (or grid point), mean ± std over its seeds of
    the final metrics, how many runs collapsed or diverged, and, for data with modes, how
    many recovered every mode. Each run is a row as the report and the sweep collect them:
    ``final`` (``final_values``), ``status``, ``wall_s``, ``both_modes``; only finished and
    diverged runs count towards the numbers ("seeds": those of all planned). A partial or
    foreign row is tolerated: a missing ``final`` (or one without a key, ``collapsed``), a
    non-numeric value, a row that is not a dict: what it lacks is not counted."""
    def number(value) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    groups = {str(name): [r for r in (runs if isinstance(runs, (list, tuple)) else []) if isinstance(r, dict)]
              for name, runs in groups.items()}
    modes = any(r.get("both_modes") is not None for runs in groups.values() for r in runs)
    head = [label, "seeds", *[c[1] for c in COLUMNS], "collapsed", "diverged",
            *(["both modes"] if modes else []), "wall s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, runs in groups.items():
        ok = [r for r in runs if r.get("status") in ("finished", "diverged")]
        finals = [r.get("final") if isinstance(r.get("final"), dict) else {} for r in ok]
        cells = [config, f"{len(ok)}/{len(runs)}"]
        cells += [_stat([number(f.get(tag)) for f in finals], fmt) for tag, _, fmt in COLUMNS]
        cells += [str(sum(bool(f.get(k)) for f in finals)) for k in ("collapsed", "diverged")]
        if modes:
            known = [bool(r["both_modes"]) for r in ok if r.get("both_modes") is not None]
            cells.append(f"{sum(known)}/{len(known)}" if known else "-")
        cells.append(_stat([number(r.get("wall_s")) for r in ok], "{:.0f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
