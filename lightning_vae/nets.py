"""Plain nn.Modules: MLPs, the Gaussian decoder and the discrete-latent VAE core."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from lightning_vae.latents import BernoulliLatent
from lightning_vae.objectives import gaussian_log_lik, log_marginal


def mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with SiLU, then a linear output layer."""
    if depth < 0 or hidden < 1:
        raise ValueError(f"depth must be >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class GaussianDecoder(nn.Module):
    """p(x | z) = N(loc(z), diag(scale(z)^2)) with mean AND per-axis std learned.

    One MLP maps a latent state to ``2 * D`` numbers: the mean and the log-std of each
    axis (shared hidden layers, as in the seed).
    """

    def __init__(self, state_dim: int, data_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.net = mlp(state_dim, hidden, depth, 2 * data_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.net(z).split(self.data_dim, dim=-1)  # (K, D) each
        return loc, log_scale.exp()


class DiscreteVAE(nn.Module):
    """Encoder, decoder and a discrete latent whose states are enumerated exactly.

    Implements what the objectives need (``log_q``, ``log_prior``, ``decoder_params``)
    and the public maths: ``log_px`` (exact), ``sample`` (clean model), ``encode``,
    ``decode``.
    """

    def __init__(
        self, data_dim: int, latent: BernoulliLatent, hidden: int = 64, depth: int = 2
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.latent = latent
        self.encoder = mlp(data_dim, hidden, depth, latent.encoder_dim)
        self.decoder = GaussianDecoder(latent.state_dim, data_dim, hidden, depth)

    def log_q(self, x: Tensor) -> Tensor:
        """log q(z | x) over the latent states, ``(B, K)``."""
        return self.latent.log_posterior(self.encoder(x))

    def log_prior(self, like: Tensor) -> Tensor:
        return self.latent.log_prior(like)

    def decoder_params(self, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decoder mean and std for every latent state, ``(K, D)`` each."""
        like = like if like is not None else next(self.parameters())
        return self.decoder(self.latent.states(like))

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) = logsumexp_z [log p(z) + log p(x|z)] per point, ``(B,)``."""
        loc, scale = self.decoder_params(x)
        return log_marginal(self.log_prior(x), gaussian_log_lik(x, loc, scale))

    def encode(self, x: Tensor):
        """q(z | x) as a ``torch.distributions`` object."""
        return self.latent.posterior(self.encoder(x))

    def decode(self, z: Tensor) -> Independent:
        """p(x | z) as a ``torch.distributions`` object; ``z`` holds latent values ``(N, 1)``."""
        loc, scale = self.decoder(z.reshape(len(z), -1).to(next(self.parameters()).dtype))
        return Independent(Normal(loc, scale), 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the clean model p(x) (no spread noise), ``(n, D)``."""
        like = next(self.parameters())
        loc, scale = self.decoder_params(like)  # (K, D)
        probs = self.log_prior(like).exp()
        device = generator.device if generator is not None else like.device
        k = torch.multinomial(probs.to(device), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.data_dim, generator=generator, device=device, dtype=like.dtype)
        k, eps = k.to(like.device), eps.to(like.device)
        return loc[k] + scale[k] * eps
