"""A user's own manifold, written as the README says (used by test_cli.py by class_path)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vae.data import Manifold


class Parabola(Manifold):
    """Points (t, t^2 / 2) for t uniform in [-1, 1]; distance by brute force over t."""

    intrinsic_dim = 1

    def __init__(self, ambient_dim: int | None = None, rotation_seed: int = 0, noise_std: float = 0.0) -> None:
        super().__init__(2, ambient_dim, rotation_seed, noise_std)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        t = 2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1
        return torch.stack([t, t.square() / 2], 1)

    def _distance(self, u: Tensor) -> Tensor:
        t = torch.linspace(-1, 1, 20001, dtype=u.dtype)
        curve = torch.stack([t, t.square() / 2], 1)
        return torch.cdist(u, curve).min(dim=1).values
