"""Latent families (torch only).

A discrete latent is enumerated exactly: ``states()`` lists every value of z (the
decoder's inputs), ``log_prior()`` their prior log-probabilities, and
``log_posterior(logits)`` turns the encoder's output into log q(z|x) over the same states.
Every expectation over q is then an exact weighted sum; no sampling, no estimator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli


class BernoulliLatent:
    """A single binary latent z in {0, 1} with prior p(z) = Bernoulli(prior_prob).

    The encoder outputs one logit per point: q(z=1 | x) = sigmoid(logit).

    Args:
        prior_prob: p(z = 1) under the prior (the seed's 0.5).
    """

    n_states = 2
    encoder_dim = 1  # logits the encoder must output per point
    state_dim = 1  # width of one state as the decoder's input

    def __init__(self, prior_prob: float = 0.5) -> None:
        if not 0 < prior_prob < 1:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.prior_prob = float(prior_prob)

    def states(self, like: Tensor) -> Tensor:
        """All values of z as decoder inputs, ``(K, 1)`` = [[0], [1]], on ``like``'s device."""
        return torch.tensor([[0.0], [1.0]], dtype=like.dtype, device=like.device)

    def log_prior(self, like: Tensor) -> Tensor:
        """log p(z) for each state, ``(K,)``."""
        p = self.prior_prob
        return torch.tensor([math.log1p(-p), math.log(p)], dtype=like.dtype, device=like.device)

    def log_posterior(self, logits: Tensor) -> Tensor:
        """log q(z | x) for each state from encoder logits ``(B, 1)``, ``(B, K)``."""
        # logsigmoid(-l) = log(1 - sigmoid(l)), computed without cancellation.
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)

    def posterior(self, logits: Tensor) -> Bernoulli:
        """q(z | x) as a ``torch.distributions`` object (batch shape ``(B,)``)."""
        return Bernoulli(logits=logits.squeeze(-1))

    def prior(self) -> Bernoulli:
        return Bernoulli(probs=torch.tensor(self.prior_prob))

    def index(self, z: Tensor) -> Tensor:
        """State index of latent values ``z`` (shape ``(N,)`` or ``(N, 1)``), ``(N,)`` long."""
        return z.reshape(-1).long()

    def __repr__(self) -> str:
        return f"BernoulliLatent(prior_prob={self.prior_prob})"
