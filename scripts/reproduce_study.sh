#!/usr/bin/env bash
# The seed study, reproduced and reported: the plain ELBO and the spread ELBO at noise
# 0.1, 0.3 and 1.0 on the seed data, 10 seeds each (40 runs), then one report.
#   scripts/reproduce_study.sh [ROOT]     (default logs/study-<time>; resumable: rerun with ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py="${LVAE_VENV:-.venv}/bin/python"
root="${1:-logs/study-$(date +%Y%m%d-%H%M%S)}"
start=$(date +%s)
"$py" -m lightning_vae sweep --config configs/seed_elbo.yaml --seeds 0-9 --name elbo --root "$root"
"$py" -m lightning_vae sweep --config configs/seed_spread.yaml --seeds 0-9 --name spread --root "$root" \
    --grid model.objective.init_args.noise_std=0.1,0.3,1.0
[ -f "$root/sweeps/report/report.md" ] || "$py" -m lightning_vae report "$root/sweeps"
echo "study: $(( $(date +%s) - start )) s wall; report in $root/sweeps/report/report.md"
