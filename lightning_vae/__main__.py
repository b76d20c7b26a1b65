"""Entry point: ``python -m lightning_vae <command> ...``, also the console script
``lightning-vae <command> ...``.

Commands: LightningCLI's ``fit``, ``validate``, ``test``, ``predict`` (``lightning_vae/cli.py``);
``sweep`` (``lightning_vae/sweep.py``); ``report`` (``lightning_vae/report.py``); ``reproduce``
(``lightning_vae/reproduce.py``).
"""

from __future__ import annotations

import sys

USAGE = """usage: lightning-vae <command> [options]    (or: python -m lightning_vae <command> ...)

Train and evaluate (LightningCLI; --help on each lists every key):
  fit         train a model:       lightning-vae fit --config seed_spread
  validate    evaluate on the validation split (--ckpt_path a checkpoint)
  test        evaluate on the test split
  predict     write per-point predictions

Experiments:
  sweep       configs x grid x seeds (seeds as one vectorised ensemble), resumable;
              locally, as scheduler commands (--dry_run) or a SLURM array (--launcher submitit)
  report      tables, results.csv and figures over the runs under a directory
  reproduce   the seed reproduction: the ELBO failure and the spread fix

Configs: a path, or a packaged config by name: {configs}
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    if command in (None, "-h", "--help", "help"):
        from lightning_vae.config_files import packaged

        print(USAGE.format(configs=", ".join(packaged())), end="")
        return
    if command == "sweep":
        from lightning_vae.sweep import main as sweep

        sweep(argv[1:])
    elif command == "report":
        from lightning_vae.report import main as report

        report(argv[1:])
    elif command == "reproduce":
        from lightning_vae.reproduce import main as reproduce

        reproduce(argv[1:])
    else:
        from lightning_vae.cli import main as cli

        if argv != sys.argv[1:]:
            sys.argv[1:] = argv
        cli()


if __name__ == "__main__":
    main()
