"""Feature-space image scores: training time of the feature network and the validation table.

    python benchmarks/bench_image_metrics.py [--threads 1] [--skip_square] [--json out.json]

Trains ``lightning_vae.image_metrics``' feature network (in a fresh temporary cache, so it
always trains) on (1) 1,200 of scikit-learn's 8x8 digits with their labels and (2) 2,000
procedural 32x32 fading squares with their intensity v as regression target, and prints
the wall and CPU time of each training; then FD / KID / precision / recall IN OUR FEATURE
SPACE of held-out real images against the training split, clean, with Gaussian noise
(std 0.02 .. 0.2), Gaussian blur (sigma 0.5 .. 2) and with half of the classes (or of the
parameter range) dropped. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_vae import image_metrics as im  # noqa: E402

NOISE = (0.02, 0.05, 0.1, 0.2)
SIGMAS = (0.5, 1.0, 1.5, 2.0)


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te] < 5  # the last: the held-out images of classes 0-4


def fading_square():
    def make(n, seed):
        v = torch.rand(n, generator=torch.Generator().manual_seed(seed))
        x = torch.zeros(n, 1, 32, 32)
        x[:, :, 13:19, 13:19] = v[:, None, None, None]
        return x, v

    (xtr, vtr), (xte, vte) = make(2000, 0), make(1000, 1)
    return xtr, vtr[:, None], xte, vte < 0.5


def run(name, train, targets, held, keep_half, reference_size=None):
    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = time.perf_counter(), time.process_time()
        scorer = im.FeatureSpaceScores(train, targets, cache_dir=cache)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"\n{name}: feature net trained in {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({len(train)} images {tuple(train.shape[1:])}); sha256 {scorer.checkpoint_sha256[:16]}...")
    ref = train if reference_size is None else train[:reference_size]
    sets = {"held-out": held}
    sets.update({f"noise {s}": im.add_noise(held, s, torch.Generator().manual_seed(1)) for s in NOISE})
    sets.update({f"blur {s}": im.blur(held, s) for s in SIGMAS})
    sets["half dropped"] = held[keep_half]
    rows = {}
    print(f"{'':14s}{'FD':>10s}{'KID':>11s}{'KID std':>10s}{'precision':>11s}{'recall':>8s}")
    t = time.perf_counter()
    for label, gen in sets.items():
        r = scorer.score(ref, gen)
        rows[label] = r
        print(f"{label:14s}{r['fd']:10.3f}{r['kid']:11.4f}{r['kid_std']:10.4f}{r['precision']:11.3f}{r['recall']:8.3f}")
    per_score = (time.perf_counter() - t) / len(sets)
    print(f"one score() call: {per_score:.2f} s ({len(ref)} real vs ~{len(held)} generated)")
    return {"train_wall_s": wall, "train_cpu_s": cpu, "score_s": per_score, "rows": rows,
            "feature_net_sha256": scorer.checkpoint_sha256}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--skip_square", action="store_true", help="only the digits")
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"threads": args.threads, "torch": torch.__version__,
              "feature_net_version": im.FEATURE_NET_VERSION}
    report["digits"] = run("digits (labels)", *digits())
    if not args.skip_square:
        report["fading_square"] = run("fading square (regression on v)", *fading_square(), reference_size=1000)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
