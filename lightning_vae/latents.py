"""Latent families (torch only).

A discrete latent (``BernoulliLatent``, ``CategoricalLatent``) is enumerated exactly:
``states()`` lists every value of z (the decoder's inputs), ``log_prior()`` their prior
log-probabilities, and ``log_posterior(logits)`` turns the encoder's output into
log q(z|x) over the same states.
Every expectation over q is then an exact weighted sum; no sampling, no estimator.

A sampled latent (``GaussianLatent``, ``HypersphericalLatent``: ``SampledLatent``) is
reparameterised by standard normal draws from the run's generator: z = rsample(params,
eps), with log p(z) - log q(z|x) exact at every draw (the IWAE bound in evaluation) and the
KL exact where it has a closed form (Gaussian) or estimated by the draws (hyperspherical).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from lightning_vae import spherical
from lightning_vae.densities import gaussian_kl

LOG_2PI = math.log(2 * math.pi)
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

    With ``data_init`` the decoder's K means start on K training points spread over the data
    (farthest point sampling), at the start of a fresh fit (not on resume): a mixture of many
    states started from a network's random means can settle with a few broad states each
    covering a long arc (a local optimum of the ELBO and the spread ELBO alike), which a
    start with the states spread along the data avoids.

    Args:
        n_states: K >= 2.
        prior: p(z) for each state (sums to 1); ``None``: uniform.
        learn_prior: learn the prior's weights (initialised at ``prior``).
        prior_update: "em" (the M-step above) or "gradient" (with ``learn_prior``).
        prior_rate: the M-step's step size in (0, 1]: 1 sets pi to each batch's aggregate
            posterior; smaller averages over about 1 / prior_rate batches.
        data_init: start the decoder's means on training points (above).
    """

    def __init__(self, n_states: int = 4, prior: list[float] | None = None,
                 learn_prior: bool = False, prior_update: str = "em", prior_rate: float = 0.01,
                 data_init: bool = True) -> None:
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
        if not isinstance(data_init, bool):
            raise ValueError(f"data_init must be true or false, got {data_init!r}")
        self.prior_update, self.prior_rate, self.data_init = prior_update, float(prior_rate), data_init

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
                f"prior_rate={self.prior_rate}, data_init={self.data_init})")


class SampledLatent(Latent):
    """Base of the continuous latents (not enumerable): z is reparameterised as a function
    of the encoder's output and standard normal noise ``eps`` drawn from the run's
    generator (``draw``), so every draw is reproducible, resumable and per ensemble member.

    Training estimates E_q log p(x|z) with ``n_samples`` draws per point; evaluation
    reports the importance-weighted bound (IWAE, Burda et al. 2016) with ``iwae_samples``
    draws: log (1/K) sum_k p(x, z_k) / q(z_k | x) <= log p(x), equal to the single-sample
    ELBO for K = 1 and non-decreasing in K on average. The decoder is monitored at
    ``n_probe`` fixed prior draws (``states``), which stand in for the states of a discrete
    latent in ``decoder/*_z<k>``.

    A subclass sets ``noise_dim`` and implements ``encoder_dim``, ``split`` (encoder output
    to the posterior's parameters ``(loc, scale)``), ``rsample``, ``log_ratio``, ``kl``,
    ``prior``, ``posterior``, ``sample_prior``, ``mean`` and ``interpolate``.
    """

    enumerable = False

    def __init__(self, dim: int = 2, n_samples: int = 1, iwae_samples: int = 64, n_probe: int = 4,
                 min_dim: int = 1) -> None:
        for name, value, low in [("dim", dim, min_dim), ("n_samples", n_samples, 1),
                                 ("iwae_samples", iwae_samples, 1), ("n_probe", n_probe, 1)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.dim, self.n_samples, self.iwae_samples, self.n_probe = dim, n_samples, iwae_samples, n_probe

    @property
    def noise_dim(self) -> int:
        """The width of one standard normal draw ``eps``."""
        return self.dim

    @property
    def state_dim(self) -> int:
        return self.dim

    def states(self, like: Tensor) -> Tensor:
        """The ``n_probe`` fixed prior draws, ``(n_probe, dim)``."""
        z = self.sample_prior(self.n_probe, torch.Generator().manual_seed(0), torch.zeros((), dtype=torch.float32))
        return z.to(dtype=like.dtype, device=like.device)

    def mean(self, params: tuple[Tensor, Tensor]) -> Tensor:
        """The latent a reconstruction decodes: the posterior's location (mean or mean direction)."""
        return params[0]

    def draw(self, n_points: int, training: bool, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Standard normal draws for the reparameterisation, ``(S, n_points, noise_dim)``."""
        s = self.n_samples if training else self.iwae_samples
        device = generator.device if generator is not None else like.device
        eps = torch.randn(s, n_points, self.noise_dim, generator=generator, device=device, dtype=like.dtype)
        return eps.to(like.device)

    def __repr__(self) -> str:
        extra = f", pca_init={self.pca_init}" if hasattr(self, "pca_init") else ""
        return (f"{type(self).__name__}(dim={self.dim}, n_samples={self.n_samples}, "
                f"iwae_samples={self.iwae_samples}, n_probe={self.n_probe}{extra})")


class GaussianLatent(SampledLatent):
    """z ~ N(0, I_dim), q(z | x) = N(loc(x), diag(scale(x)^2)), reparameterised (not enumerable);
    the KL to the prior is exact. See ``SampledLatent`` for training and evaluation.

    Args:
        dim: latent dimension (>= 1).
        n_samples: draws per point in training (>= 1).
        iwae_samples: draws per point for the IWAE bound in evaluation (>= 1).
        n_probe: fixed prior draws at which the decoder is monitored (>= 1).
    """

    def __init__(self, dim: int = 2, n_samples: int = 1, iwae_samples: int = 64, n_probe: int = 4) -> None:
        super().__init__(dim, n_samples, iwae_samples, n_probe)

    @property
    def encoder_dim(self) -> int:
        return 2 * self.dim  # mean and log-std

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """loc and scale of q(z | x) from the encoder's output, ``(B, dim)`` each."""
        loc, log_scale = out.split(self.dim, dim=-1)
        return loc, log_scale.exp()

    def rsample(self, params: tuple[Tensor, Tensor], eps: Tensor) -> Tensor:
        """z = loc + scale * eps, ``(S, B, dim)``."""
        loc, scale = params
        return loc + scale * eps

    def log_ratio(self, z: Tensor, eps: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        """log p(z) - log q(z | x) at the draws, ``(S, B)``."""
        log_p = -0.5 * (z.square() + LOG_2PI).sum(-1)
        log_q = -(0.5 * eps.square() + params[1].log() + 0.5 * LOG_2PI).sum(-1)
        return log_p - log_q

    def kl(self, params: tuple[Tensor, Tensor], log_ratio: Tensor) -> Tensor:
        """KL(q || p), exact, ``(B,)``."""
        return gaussian_kl(*params)

    def prior(self, like: Tensor | None = None) -> Independent:
        zero = torch.zeros(self.dim) if like is None else torch.zeros(self.dim, dtype=like.dtype, device=like.device)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def posterior(self, params: tuple[Tensor, Tensor]) -> Independent:
        return Independent(Normal(*params), 1)

    def sample_prior(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """``n`` prior draws from ``generator`` (on its device), ``(n, dim)`` on ``like``'s."""
        device = generator.device if generator is not None else like.device
        return torch.randn(n, self.dim, generator=generator, device=device, dtype=like.dtype).to(like.device)

    def interpolate(self, z_a: Tensor, z_b: Tensor, t: Tensor) -> Tensor:
        """The straight line between ``z_a`` and ``z_b`` at fractions ``t``."""
        return z_a * (1 - t) + z_b * t


class HypersphericalLatent(SampledLatent):
    """z on the unit sphere S^(dim-1) in R^dim with the uniform prior; q(z | x) the wrapped
    normal: the isotropic tangent Gaussian N(0, sigma(x)^2 I) at the mean direction mu(x),
    mapped onto the sphere by the exponential map (``lightning_vae.spherical``).

    A latent for closed manifolds. A continuous decoder from a Gaussian latent's R^d onto a
    circle or a sphere must send prior mass off it (R^d is not a circle), which is where a
    Gaussian latent's samples land; the sphere S^m has the topology of a circle (m = 1) or
    of a sphere (m = 2), so a decoder can map it onto the data's manifold with nothing left
    over (the motivation of Davidson et al. 2018, hyperspherical VAEs, who use von
    Mises-Fisher posteriors). The wrapped normal keeps what this project needs: its noise is
    plain standard normal draws from the run's generator (reproducible, resumable, per
    ensemble member; a vMF's rejection sampler cannot take one), and its density is exact
    (a series over the exponential map's preimages, truncated below float64 precision).

    log p(x) in evaluation is the IWAE bound with ``iwae_samples`` draws (a lower bound,
    tight as the draws grow, as for the Gaussian latent). The KL term has no closed form:
    training uses the draws' estimate, KL ~ mean_s [log q(z_s | x) - log p(z_s)] (unbiased).

    The map from the data to the mean direction must have degree one on a closed manifold
    (wrap a circle once around the latent circle): a degree-zero map (the data folded onto
    an arc) is a local optimum no gradient step leaves, and a randomly initialised encoder
    starts with degree zero (its image of a circle does not enclose the origin). With
    ``pca_init`` the encoder's direction gets a linear path, set at the start of a fresh fit
    to the training data's top ``dim`` principal directions (centred, scaled to dominate
    the network's initial output): a circle or a sphere starts as an ellipse or ellipsoid
    around the origin, a degree-one map, and the path trains on with the rest.

    Args:
        dim: the ambient dimension of z: 2 is a circle S^1, 3 the sphere S^2 (>= 2).
        n_samples: draws per point in training (>= 1).
        iwae_samples: draws per point for the IWAE bound in evaluation (>= 1).
        n_probe: fixed prior draws at which the decoder is monitored (>= 1).
        pca_init: start the encoder's direction from the data's principal directions.
    """

    def __init__(self, dim: int = 2, n_samples: int = 1, iwae_samples: int = 64, n_probe: int = 4,
                 pca_init: bool = True) -> None:
        super().__init__(dim, n_samples, iwae_samples, n_probe, min_dim=2)
        if not isinstance(pca_init, bool):
            raise ValueError(f"pca_init must be true or false, got {pca_init!r}")
        self.pca_init = pca_init

    @property
    def m(self) -> int:
        """The sphere's own dimension, dim - 1."""
        return self.dim - 1

    @property
    def noise_dim(self) -> int:
        return self.m  # the tangent space's

    @property
    def encoder_dim(self) -> int:
        return self.dim + 1  # an unnormalised direction and the tangent std's logit

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """The mean direction mu ``(B, dim)`` (unit) and the tangent std sigma ``(B, 1)`` in
        (0, pi) (= pi sigmoid(logit - 2): 0.38 at logit 0) from the encoder's output."""
        mu = F.normalize(out[..., : self.dim], dim=-1)
        sigma = spherical.SIGMA_MAX * torch.sigmoid(out[..., self.dim :] - 2.0)
        return mu, sigma

    def rsample(self, params: tuple[Tensor, Tensor], eps: Tensor) -> Tensor:
        """z = exp_mu(sigma * eps in the tangent frame at mu), ``(S, B, dim)``."""
        mu, sigma = params
        return spherical.wrapped_normal_rsample(mu, sigma[..., 0], eps)

    def log_ratio(self, z: Tensor, eps: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        """log p(z) - log q(z | x) at the draws (the exact wrapped-normal density), ``(S, B)``."""
        mu, sigma = params
        return spherical.uniform_log_prob(z) - spherical.wrapped_normal_log_prob(z, mu, sigma[..., 0])

    def kl(self, params: tuple[Tensor, Tensor], log_ratio: Tensor) -> Tensor:
        """KL(q || p) estimated by the draws: mean_s of -log_ratio, ``(B,)``."""
        return -log_ratio.mean(0)

    def prior(self, like: Tensor | None = None) -> spherical.HypersphericalUniform:
        if like is None:
            return spherical.HypersphericalUniform(self.m)
        return spherical.HypersphericalUniform(self.m, device=like.device, dtype=like.dtype)

    def posterior(self, params: tuple[Tensor, Tensor]) -> spherical.WrappedNormal:
        mu, sigma = params
        return spherical.WrappedNormal(mu, sigma[..., 0])

    def sample_prior(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """``n`` uniform draws on the sphere from ``generator``, ``(n, dim)`` on ``like``'s device."""
        device = generator.device if generator is not None else like.device
        return spherical.sample_uniform(n, self.m, generator=generator, device=device,
                                        dtype=like.dtype).to(like.device)

    def interpolate(self, z_a: Tensor, z_b: Tensor, t: Tensor) -> Tensor:
        """Along the great circle from ``z_a`` to ``z_b`` (slerp), at fractions ``t``; the
        normalised straight line where the two are (nearly) the same or antipodal."""
        cos = (z_a * z_b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        omega = torch.arccos(cos)
        sin = torch.sin(omega)
        ok = sin > 1e-6
        safe = torch.where(ok, sin, torch.ones_like(sin))
        slerp = (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / safe
        line = F.normalize(z_a * (1 - t) + z_b * t, dim=-1)
        return torch.where(ok, slerp, line)
