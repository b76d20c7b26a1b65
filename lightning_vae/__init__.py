"""lightning_vae: why likelihood training breaks on manifold data, and how spread fixes it."""

from lightning_vae.model import VAE
from lightning_vae.objectives import ELBO, SpreadELBO

__all__ = ["ELBO", "SpreadELBO", "VAE"]
__version__ = "0.1.0"
