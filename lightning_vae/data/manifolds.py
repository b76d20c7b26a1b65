"""Pure samplers of manifold data (torch only).

A manifold knows how to draw points from its data distribution with an explicit
``torch.Generator`` and knows its own geometry: the exact distance of any point to the
support, and, where the data have discrete components (modes), which component a point
belongs to. Metrics use the geometry; the datamodule only calls ``sample``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Manifold:
    """Interface of a data distribution supported on a known manifold.

    Subclasses set ``dim`` (ambient dimension), ``intrinsic_dim`` and ``n_components``
    (0 when the data have no discrete modes) and implement ``sample``, ``distance`` and,
    when ``n_components > 0``, ``component``.
    """

    dim: int
    intrinsic_dim: int
    n_components: int = 0

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` points, shape ``(n, dim)``."""
        raise NotImplementedError

    def distance(self, x: Tensor) -> Tensor:
        """Exact Euclidean distance of each row of ``x`` ``(N, dim)`` to the support, ``(N,)``."""
        raise NotImplementedError

    def component(self, x: Tensor) -> Tensor:
        """Index of the component (mode) nearest to each row of ``x``, ``(N,)`` long."""
        raise NotImplementedError(f"{type(self).__name__} has no discrete components")


class TwoClusters(Manifold):
    """The seed's data: two Gaussian clusters on the first axis of R^dim.

    z ~ Bernoulli(0.5),  a ~ Normal(2z - 1, cluster_std),  x = (a, 0, ..., 0).

    The support is the line through the first axis (a 1-D manifold); every other
    coordinate is exactly zero, which is what breaks maximum likelihood.

    Args:
        cluster_std: standard deviation ``s`` of each cluster along the line (the seed's
            0.1; it is a std, not a variance).
        separation: distance of each cluster centre from the origin (centres at -sep, +sep).
        dim: ambient dimension (the seed's 2).
    """

    intrinsic_dim = 1
    n_components = 2

    def __init__(self, cluster_std: float = 0.1, separation: float = 1.0, dim: int = 2) -> None:
        if cluster_std < 0:
            raise ValueError(f"cluster_std must be >= 0, got {cluster_std}")
        if separation <= 0:
            raise ValueError(f"separation must be > 0, got {separation}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.cluster_std = float(cluster_std)
        self.separation = float(separation)
        self.dim = int(dim)

    @property
    def centres(self) -> Tensor:
        """The two cluster centres, ``(2, dim)``; row k is the mean of component k."""
        c = torch.zeros(2, self.dim)
        c[:, 0] = torch.tensor([-self.separation, self.separation])
        return c

    def line_entropy(self, n_grid: int = 200_001) -> float:
        """Differential entropy (nats) of the coordinate along the line, by quadrature.

        Cross-entropy >= entropy: no model of that coordinate alone can reach an expected
        negative log-likelihood below this. A loss below it must come from the other axes.
        """
        if self.cluster_std == 0:
            return -math.inf
        s, m = self.cluster_std, self.separation
        a = torch.linspace(-m - 12 * s, m + 12 * s, n_grid, dtype=torch.float64)
        log_p = torch.logsumexp(torch.stack([
            -0.5 * ((a - c) / s) ** 2 for c in (-m, m)]), 0) - math.log(2 * s * math.sqrt(2 * math.pi))
        return float(-(log_p.exp() * log_p).sum() * (a[1] - a[0]))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randint(0, 2, (n,), generator=generator)
        a = (2 * z - 1) * self.separation + self.cluster_std * torch.randn(n, generator=generator)
        x = torch.zeros(n, self.dim)  # (N, D)
        x[:, 0] = a
        return x

    def distance(self, x: Tensor) -> Tensor:
        # Distance to the line spanned by the first axis: norm of the other coordinates.
        return x[:, 1:].norm(dim=1)

    def component(self, x: Tensor) -> Tensor:
        return (x[:, 0] > 0).long()
