"""Latent families (torch only).

A discrete latent (``BernoulliLatent``, ``CategoricalLatent``) is enumerated exactly:
``states()`` lists every value of z (the decoder's inputs), ``log_prior()`` their prior
log-probabilities, and ``log_posterior(logits)`` turns the encoder's output into
log q(z|x) over the same states.
Every expectation over q is then an exact weighted sum; no sampling, no estimator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Categorical

PRIOR_UPDATES = ("em", "gradient")  # CategoricalLatent(prior_update=...)


class Latent:
    """Base of the latent families (``model.latent``): ``enumerable`` ones are summed over
    exactly, the others sampled."""

    enumerable = True


class DiscreteLatent(Latent):
    """Base of the enumerable latents: ``n_states``, ``encoder_dim``, ``state_dim``,
    ``states(like)``, ``log_prior(like)``, ``log_posterior(logits)``, ``posterior(logits)``,
    ``prior()`` and ``index(z)``. Subclass it for your own; name it as ``model.latent``."""


class BernoulliLatent(DiscreteLatent):
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


class CategoricalLatent(DiscreteLatent):
    """One categorical latent z in {0, ..., K-1}, enumerated exactly.

    The encoder outputs K logits per point: q(z | x) = softmax(logits). The decoder sees
    z one-hot, ``(K, K)``. With K = 2 it is the Bernoulli latent written with two logits
    (q(z=1|x) = sigmoid(l1 - l0)): the same ELBO and log p(x) (tested).

    With ``learn_prior`` the prior's weights pi are learned (initialised at ``prior``):
    p(x) = sum_k pi_k p(x|k) is then a mixture with learned weights, and a state the encoder
    never uses gets pi_k -> 0 instead of keeping 1/K of the samples (a fixed uniform prior
    keeps sampling such "dead" states). ``prior_update`` says how:

    - ``"em"`` (default): the exact M-step. Given the encoder, the objective's best weights
      are the aggregate posterior pi_k = E_y q(k | y) (the only prior-dependent term is
      -E_y KL(q(.|y) || pi), maximised over the simplex there), so after every optimizer
      step pi <- (1 - prior_rate) pi + prior_rate * mean_b q(k | y_b) over the step's batch
      y (the data the objective scored, e.g. spread), an online EM (Cappe & Moulines 2009):
      a running estimate of the aggregate posterior, not limited by the learning rate;
    - ``"gradient"``: the prior's logits are a parameter trained by the optimizer with the
      rest (under Adam a logit moves ~lr per step, so a dead state's weight falls slowly).

    Args:
        n_states: K >= 2.
        prior: p(z) for each state (sums to 1); ``None``: uniform.
        learn_prior: learn the prior's weights (initialised at ``prior``).
        prior_update: "em" (the M-step above) or "gradient" (with ``learn_prior``).
        prior_rate: the M-step's step size in (0, 1]: 1 sets pi to each batch's aggregate
            posterior; smaller averages over about 1 / prior_rate batches.
    """

    def __init__(self, n_states: int = 4, prior: list[float] | None = None,
                 learn_prior: bool = False, prior_update: str = "em", prior_rate: float = 0.01) -> None:
        if isinstance(n_states, bool) or not isinstance(n_states, int) or n_states < 2:
            raise ValueError(f"n_states must be an integer >= 2, got {n_states!r}")
        if prior is not None:
            if len(prior) != n_states:
                raise ValueError(f"prior must have n_states = {n_states} entries, got {len(prior)}")
            if any(not p > 0 for p in prior) or abs(sum(prior) - 1) > 1e-6:
                raise ValueError(f"prior must be positive and sum to 1, got {list(prior)}")
        if not isinstance(learn_prior, bool):
            raise ValueError(f"learn_prior must be true or false, got {learn_prior!r}")
        if prior_update not in PRIOR_UPDATES:
            raise ValueError(f"prior_update must be one of {', '.join(PRIOR_UPDATES)}, got {prior_update!r}")
        if isinstance(prior_rate, bool) or not isinstance(prior_rate, (int, float)) or not 0 < prior_rate <= 1:
            raise ValueError(f"prior_rate must be a number in (0, 1], got {prior_rate!r}")
        self.n_states = int(n_states)
        self.prior_probs = None if prior is None else [float(p) for p in prior]
        self.learn_prior = learn_prior
        self.prior_update, self.prior_rate = prior_update, float(prior_rate)

    @property
    def em_prior(self) -> bool:
        """Whether the learned weights are set by the M-step (not by gradients)."""
        return self.learn_prior and self.prior_update == "em"

    @property
    def encoder_dim(self) -> int:
        return self.n_states

    @property
    def state_dim(self) -> int:
        return self.n_states

    def states(self, like: Tensor) -> Tensor:
        """Every value of z one-hot, ``(K, K)``, on ``like``'s device."""
        return torch.eye(self.n_states, dtype=like.dtype, device=like.device)

    def log_prior(self, like: Tensor) -> Tensor:
        """log p(z) for each state, ``(K,)``."""
        if self.prior_probs is None:
            return torch.full((self.n_states,), -math.log(self.n_states), dtype=like.dtype,
                              device=like.device)
        return torch.tensor(self.prior_probs, dtype=like.dtype, device=like.device).log()

    def log_posterior(self, logits: Tensor) -> Tensor:
        """log q(z | x) for each state from encoder logits ``(B, K)``, ``(B, K)``."""
        return F.log_softmax(logits, dim=-1)

    def posterior(self, logits: Tensor) -> Categorical:
        return Categorical(logits=logits)

    def prior(self) -> Categorical:
        """The configured prior (with ``learn_prior``, the initial one; the learned one is
        ``model.prior()``)."""
        return Categorical(logits=self.log_prior(torch.zeros(())))

    def index(self, z: Tensor) -> Tensor:
        """State index of latent values: indices ``(N,)`` or one-hot rows ``(N, K)``."""
        return z.argmax(-1) if z.dim() == 2 and z.shape[-1] == self.n_states else z.reshape(-1).long()

    def __repr__(self) -> str:
        return (f"CategoricalLatent(n_states={self.n_states}, prior={self.prior_probs}, "
                f"learn_prior={self.learn_prior}, prior_update={self.prior_update!r}, "
                f"prior_rate={self.prior_rate})")


class GaussianLatent(Latent):
    """z ~ N(0, I_dim), q(z | x) = N(loc(x), diag(scale(x)^2)), reparameterised (not enumerable).

    Training estimates E_q log p(x|z) with ``n_samples`` draws per point (the KL to the
    prior is exact); evaluation reports the importance-weighted bound (IWAE, Burda et al.
    2016) with ``iwae_samples`` draws: log (1/K) sum_k p(x, z_k) / q(z_k | x) <= log p(x),
    equal to the single-sample ELBO for K = 1 and non-decreasing in K on average.
    The decoder is monitored at ``n_probe`` fixed prior draws (``states``), which stand in
    for the states of a discrete latent in ``decoder/*_z<k>``.

    Args:
        dim: latent dimension (>= 1).
        n_samples: draws per point in training (>= 1).
        iwae_samples: draws per point for the IWAE bound in evaluation (>= 1).
        n_probe: fixed prior draws at which the decoder is monitored (>= 1).
    """

    enumerable = False

    def __init__(self, dim: int = 2, n_samples: int = 1, iwae_samples: int = 64, n_probe: int = 4) -> None:
        for name, value in [("dim", dim), ("n_samples", n_samples), ("iwae_samples", iwae_samples),
                            ("n_probe", n_probe)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.dim, self.n_samples, self.iwae_samples, self.n_probe = dim, n_samples, iwae_samples, n_probe

    @property
    def encoder_dim(self) -> int:
        return 2 * self.dim  # mean and log-std

    @property
    def state_dim(self) -> int:
        return self.dim

    def states(self, like: Tensor) -> Tensor:
        """The ``n_probe`` fixed prior draws, ``(n_probe, dim)``."""
        z = torch.randn(self.n_probe, self.dim, generator=torch.Generator().manual_seed(0))
        return z.to(dtype=like.dtype, device=like.device)

    def draw(self, n_points: int, training: bool, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Standard normal draws for the reparameterisation, ``(S, n_points, dim)``."""
        s = self.n_samples if training else self.iwae_samples
        device = generator.device if generator is not None else like.device
        eps = torch.randn(s, n_points, self.dim, generator=generator, device=device, dtype=like.dtype)
        return eps.to(like.device)

    def __repr__(self) -> str:
        return (f"GaussianLatent(dim={self.dim}, n_samples={self.n_samples}, "
                f"iwae_samples={self.iwae_samples}, n_probe={self.n_probe})")
