"""Entry point: ``python -m lightning_vae fit --config configs/seed_spread.yaml``; also
``python -m lightning_vae sweep ...`` (``lightning_vae/sweep.py``) and ``python -m lightning_vae
report <dir>`` (``lightning_vae/study.py``). Every other subcommand is
LightningCLI's (fit, validate, test, predict)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["sweep"]:
        from lightning_vae.sweep import main as sweep

        sweep(sys.argv[2:])
    elif sys.argv[1:2] == ["report"]:
        from lightning_vae.study import main as report

        report(sys.argv[2:])
    else:
        from lightning_vae.cli import main

        main()
