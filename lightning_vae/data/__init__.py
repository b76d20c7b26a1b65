"""Manifold data: pure samplers and the LightningDataModule that serves them."""

from lightning_vae.data.datamodule import ManifoldDataModule
from lightning_vae.data.manifolds import Manifold, TwoClusters

__all__ = ["Manifold", "ManifoldDataModule", "TwoClusters"]
