#!/usr/bin/env bash
# The seed study, reproduced and reported: the plain ELBO and the spread ELBO at noise
# 0.1, 0.3 and 1.0 on the seed data, 10 seeds each (40 runs as 4 vectorised ensembles of
# 10, README: "Sweeps"), then one report.
#   scripts/reproduce_study.sh [ROOT]     (default logs/study-<time>; resumable: rerun with ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py="${LVAE_VENV:-.venv}/bin/python"
root="${1:-logs/study-$(date +%Y%m%d-%H%M%S)}"
start=$(date +%s)
# One sweep, four units (the ELBO; spread at three noise levels), each a 10-seed ensemble,
# two at a time: the noise grid belongs to the spread config only ("seed_spread:").
"$py" -m lightning_vae sweep --config seed_elbo seed_spread --seeds 0-9 --name study --root "$root" \
    --grid seed_spread:model.objective.init_args.noise_std=0.1,0.3,1.0
[ -f "$root/sweeps/study/report/report.md" ] || "$py" -m lightning_vae report "$root/sweeps/study"
echo "study: $(( $(date +%s) - start )) s wall; report in $root/sweeps/study/report/report.md"
