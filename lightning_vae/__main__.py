"""Entry point: ``python -m lightning_vae fit --config configs/seed_spread.yaml``."""

from lightning_vae.cli import main

if __name__ == "__main__":
    main()
