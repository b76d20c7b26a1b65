#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv (or $LVAE_VENV) with lightning_vae installed.
#  - torch: kept if the environment already has one (bring your own CUDA/ROCm build);
#    otherwise the CPU wheel torch==$LVAE_TORCH (default 2.13.0) is installed when pip
#    can find it (a local wheel cache, or the CPU index you point pip at), else plain torch.
#  - the package and its test extra are (re)installed only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LVAE_VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch" >&2
  "$py" -m pip install -q "torch==${LVAE_TORCH:-2.13.0}" || "$py" -m pip install -q torch
fi
stamp="$venv/.lightning_vae-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing lightning_vae and its test extra" >&2
  "$py" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
