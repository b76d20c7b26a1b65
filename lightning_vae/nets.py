"""Plain nn.Modules: MLPs, the decoder families and the two VAE cores.

A core is what an objective scores (``lightning_vae.objectives.VAECore``): it says whether
its decoder is ``deterministic``, draws the latent noise a step needs (``draws``), and
takes the expectation over q(z | y) of any likelihood the objective hands it
(``expectation``): an exact sum over the states of a discrete latent (``DiscreteVAE``) or
reparameterised draws of a Gaussian one (``GaussianVAE``).
"""

from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from lightning_vae.densities import (
    Expectation,
    LogLik,
    elbo_terms,
    gaussian_log_lik,
    log_marginal,
    log_mean_exp,
    normal_log_prob,
)
from lightning_vae.latents import DiscreteLatent, SampledLatent


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


def _leading(x: Tensor, n_trailing: int) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` ``(*lead, *trailing)`` flattened to ``(prod(lead), *trailing)``, and ``lead``."""
    lead = tuple(x.shape[: x.dim() - n_trailing])
    return x.reshape(-1, *x.shape[x.dim() - n_trailing :]), lead


def _float32(out: Tensor) -> Tensor:
    """A network's output in at least float32: under ``bf16-mixed``/``16-mixed`` autocast the
    layers run in half precision, but every likelihood sums D terms (1024 for a 32x32
    image), which half precision cannot hold; the objective's arithmetic is float32."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


class Network:
    """Base of the architectures (``model.network``): a config object that builds the
    encoder (data ``(..., D)`` -> ``(..., n_out)``) and the decoder trunk (latent state
    ``(..., S)`` -> ``(..., D + n_scale)``: the mean, then ``n_scale`` log-stds: 0, 1 or D).
    ``image_shape`` (C, H, W), where the data are images, is given by the model (linked
    from the datamodule); an MLP ignores it."""

    def encoder(self, data_dim: int, n_out: int, image_shape: tuple[int, ...] | None = None) -> nn.Module:
        raise NotImplementedError

    def decoder(self, state_dim: int, data_dim: int, n_scale: int,
                image_shape: tuple[int, ...] | None = None) -> nn.Module:
        raise NotImplementedError


class MLP(Network):
    """Fully connected encoder and decoder: ``depth`` hidden layers of ``hidden`` units with
    SiLU (the default; ``model.hidden`` and ``model.depth`` set it when no network is given).

    Args:
        hidden: width of the hidden layers.
        depth: number of hidden layers.
    """

    def __init__(self, hidden: int = 64, depth: int = 2) -> None:
        if depth < 0 or hidden < 1:
            raise ValueError(f"depth must be >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
        self.hidden, self.depth = int(hidden), int(depth)

    def encoder(self, data_dim: int, n_out: int, image_shape: tuple[int, ...] | None = None) -> nn.Module:
        return mlp(data_dim, self.hidden, self.depth, n_out)

    def decoder(self, state_dim: int, data_dim: int, n_scale: int,
                image_shape: tuple[int, ...] | None = None) -> nn.Module:
        return mlp(state_dim, self.hidden, self.depth, data_dim + n_scale)

    def __repr__(self) -> str:
        return f"MLP(hidden={self.hidden}, depth={self.depth})"


class ConvNet(Network):
    """A DCGAN-like convolutional encoder and decoder for images (Radford et al. 2016,
    without batch norm, so that every image's likelihood depends on that image only, as the
    exact and vmapped evaluations assume).

    Encoder: ``depth`` blocks of Conv2d(kernel 4, stride 2, padding 1) + SiLU, the channels
    ``width, 2 width, 4 width, ...`` (each block halves H and W), then a linear layer.
    Decoder: the mirror image: a linear layer to the smallest feature map, ``depth - 1``
    ConvTranspose2d(4, 2, 1) + SiLU blocks halving the channels, and a last
    ConvTranspose2d to the image's C channels (2C with a per-pixel learned std; a shared
    std comes from its own linear head). The output is linear (no sigmoid): a pixel can be
    exactly 0, as the background of ``FadingSquare`` is. The model sees flat vectors
    ``(N, C*H*W)`` (row-major over C, H, W); the network reshapes them.

    Args:
        width: channels of the first encoder block (DCGAN's ``ndf``/``ngf``).
        depth: number of stride-2 blocks; H and W must be divisible by 2**depth.
        channels_last: on a CUDA device, run the convolutions in channels-last memory
            format (faster tensor-core kernels, notably under ``bf16-mixed``); ignored on
            the CPU.
    """

    def __init__(self, width: int = 32, depth: int = 3, channels_last: bool = True) -> None:
        if not (isinstance(width, int) and width >= 1):
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self.width, self.depth, self.channels_last = width, depth, bool(channels_last)

    def _shape(self, data_dim: int, image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
        if image_shape is None:
            raise ValueError(f"ConvNet needs image data (data.image_shape, e.g. from "
                             f"lightning_vae.data.FadingSquare); the data are points in R^{data_dim}: expected "
                             f"lightning_vae.nets.MLP for them")
        c, h, w = (int(v) for v in image_shape)
        if c * h * w != data_dim:
            raise ValueError(f"image_shape must have C*H*W = data_dim = {data_dim}, got {tuple(image_shape)}")
        f = 2**self.depth
        if h % f or w % f:
            most = min((h & -h), (w & -w)).bit_length() - 1
            raise ValueError(f"depth must be <= {most} for a {h}x{w} image ({self.depth} stride-2 blocks need H and W "
                             f"divisible by {f}), got {self.depth}")
        return c, h, w

    def encoder(self, data_dim: int, n_out: int, image_shape: tuple[int, ...] | None = None) -> nn.Module:
        return _ConvEncoder(self._shape(data_dim, image_shape), self.width, self.depth, n_out, self.channels_last)

    def decoder(self, state_dim: int, data_dim: int, n_scale: int,
                image_shape: tuple[int, ...] | None = None) -> nn.Module:
        return _ConvDecoder(state_dim, self._shape(data_dim, image_shape), self.width, self.depth, n_scale,
                            self.channels_last)

    def __repr__(self) -> str:
        return f"ConvNet(width={self.width}, depth={self.depth}, channels_last={self.channels_last})"


def _memory_format(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.is_cuda else x


class _ConvEncoder(nn.Module):
    """``(..., C*H*W)`` -> ``(..., n_out)``."""

    def __init__(self, shape: tuple[int, int, int], width: int, depth: int, n_out: int,
                 channels_last: bool) -> None:
        super().__init__()
        self.shape, self.channels_last = shape, channels_last
        c, h, w = shape
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(c if i == 0 else width * 2 ** (i - 1), width * 2**i, 4, 2, 1), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(width * 2 ** (depth - 1) * (h >> depth) * (w >> depth), n_out)

    def forward(self, x: Tensor) -> Tensor:
        flat, lead = _leading(x, 1)
        h = self.conv(_memory_format(flat.reshape(-1, *self.shape), self.channels_last))
        return _float32(self.out(h.flatten(1))).reshape(*lead, -1)


class _ConvDecoder(nn.Module):
    """``(..., S)`` -> ``(..., C*H*W + n_scale)``: the mean image (flat), then the log-stds."""

    def __init__(self, state_dim: int, shape: tuple[int, int, int], width: int, depth: int, n_scale: int,
                 channels_last: bool) -> None:
        super().__init__()
        self.shape, self.n_scale, self.channels_last = shape, n_scale, channels_last
        c, h, w = shape
        self.start = (width * 2 ** (depth - 1), h >> depth, w >> depth)
        self.inp = nn.Linear(state_dim, self.start[0] * self.start[1] * self.start[2])
        per_pixel = n_scale == c * h * w
        if n_scale not in (0, 1) and not per_pixel:
            raise ValueError(f"n_scale must be 0, 1 or C*H*W = {c * h * w}, got {n_scale}")
        layers: list[nn.Module] = [nn.SiLU()]
        for i in range(depth - 1, 0, -1):
            layers += [nn.ConvTranspose2d(width * 2**i, width * 2 ** (i - 1), 4, 2, 1), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(width, 2 * c if per_pixel else c, 4, 2, 1))
        self.deconv = nn.Sequential(*layers)
        self.shared_scale = nn.Linear(state_dim, 1) if n_scale == 1 else None

    def forward(self, z: Tensor) -> Tensor:
        flat, lead = _leading(z, 1)
        h = self.inp(flat).reshape(-1, *self.start)
        out = _float32(self.deconv(_memory_format(h, self.channels_last))).flatten(1)  # (N, C*H*W [* 2])
        if self.shared_scale is not None:
            out = torch.cat([out, _float32(self.shared_scale(flat))], dim=-1)
        return out.reshape(*lead, -1)


VARIANCES = ("per_axis", "shared", "fixed")
# The least weight of a state under the M-step (CategoricalLatent(prior_update="em")):
# log pi stays finite, and a state at the floor holds a negligible share of the samples.
PRIOR_FLOOR = 1e-12


class Decoder:
    """Base of the decoder families: a config object whose ``build(state_dim, data_dim,
    hidden, depth, network, image_shape)`` makes the module (latent state -> loc, std), and
    ``deterministic``. The architecture is ``network``'s (an ``MLP(hidden, depth)`` when None)."""

    deterministic = False

    def build(self, state_dim: int, data_dim: int, hidden: int, depth: int, network: Network | None = None,
              image_shape: tuple[int, ...] | None = None) -> nn.Module:
        raise NotImplementedError


class GaussianDecoder(Decoder):
    """p(x | z) = N(loc(z), diag(std(z)^2)): the decoder family of the seed and its variants.

    A config object; ``build`` makes the module. One MLP maps a latent state to the mean
    and, for a learned variance, the log-std (shared hidden layers, as in the seed).

    Args:
        variance: "per_axis": a std per axis and state, learned (the seed); "shared": one
            learned std per state for all axes; "fixed": ``fixed_std`` everywhere.
        fixed_std: the std of "fixed".
        min_std: a floor, std = min_std + exp(log_std): the common hack against variance
            collapse, to compare with a spread objective (0: none).
    """

    deterministic = False

    def __init__(self, variance: str = "per_axis", fixed_std: float = 1.0, min_std: float = 0.0) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
        if not fixed_std > 0:
            raise ValueError(f"fixed_std must be > 0, got {fixed_std}")
        if not min_std >= 0:
            raise ValueError(f"min_std must be >= 0, got {min_std}")
        self.variance, self.fixed_std, self.min_std = variance, float(fixed_std), float(min_std)

    def build(self, state_dim: int, data_dim: int, hidden: int, depth: int, network: Network | None = None,
              image_shape: tuple[int, ...] | None = None) -> nn.Module:
        n_scale = {"per_axis": data_dim, "shared": 1, "fixed": 0}[self.variance]
        trunk = (network or MLP(hidden, depth)).decoder(state_dim, data_dim, n_scale, image_shape)
        return _DecoderNet(trunk, data_dim, n_scale, self.fixed_std, self.min_std)

    def __repr__(self) -> str:
        return f"GaussianDecoder(variance={self.variance!r}, fixed_std={self.fixed_std}, min_std={self.min_std})"


class DeterministicDecoder(Decoder):
    """p(x | z) = delta(x - loc(z)): no variance at all (the delta-VAE, docs/science.md §3).

    Its likelihood exists only convolved with a spread kernel: train it with ``SpreadELBO``
    (noise > 0); the plain ELBO refuses it. Its std is reported as 0.
    """

    deterministic = True

    def build(self, state_dim: int, data_dim: int, hidden: int, depth: int, network: Network | None = None,
              image_shape: tuple[int, ...] | None = None) -> nn.Module:
        trunk = (network or MLP(hidden, depth)).decoder(state_dim, data_dim, 0, image_shape)
        return _DecoderNet(trunk, data_dim, n_scale=0, fixed_std=0.0, min_std=0.0)

    def __repr__(self) -> str:
        return "DeterministicDecoder()"


class _DecoderNet(nn.Module):
    """latent state ``(K, S)`` -> (loc ``(K, D)``, std ``(K, D)``), from a trunk's
    ``(K, D + n_scale)`` output (``Network.decoder``)."""

    def __init__(self, trunk: nn.Module, data_dim: int, n_scale: int, fixed_std: float, min_std: float) -> None:
        super().__init__()
        self.data_dim, self.n_scale, self.fixed_std, self.min_std = data_dim, n_scale, fixed_std, min_std
        self.net = trunk

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        out = _float32(self.net(z))
        loc = out[..., : self.data_dim]
        if hasattr(self, "loc_path"):  # CategoricalLatent(data_init=True): per-state offsets
            loc = loc + _float32(self.loc_path(z))
        if self.n_scale == 0:
            return loc, torch.full_like(loc, self.fixed_std)
        scale = out[..., self.data_dim :].exp().expand_as(loc)  # (K, D) or (K, 1) -> (K, D)
        return loc, scale + self.min_std if self.min_std else scale


def m_step_logits(logits: Tensor, posterior_mean: Tensor, rate: float) -> Tensor:
    """The M-step of mixture weights in logit form: pi = softmax(``logits``) moved to
    (1 - rate) pi + rate * ``posterior_mean`` (the aggregate posterior; rate 1: the exact
    M-step), floored at ``PRIOR_FLOOR`` so that log pi stays finite; returned as centred
    logits. Rows (leading dims, e.g. an ensemble's members) are independent; a row whose
    result is not finite (a non-finite step the divergence guard skips) is unchanged."""
    old = torch.softmax(logits, -1)
    pi = ((1 - rate) * old + rate * posterior_mean.to(old)).clamp_min(PRIOR_FLOOR)
    log_pi = pi.log()
    new = log_pi - log_pi.mean(-1, keepdim=True)
    return torch.where(torch.isfinite(new).all(-1, keepdim=True), new, logits)


class DiscreteVAE(nn.Module):
    """Encoder, decoder and a discrete latent whose states are enumerated exactly.

    Implements what the objectives need (``deterministic``, ``draws``, ``expectation``:
    exact sums over the states) and the public maths: ``log_q``, ``log_prior``,
    ``decoder_params``, ``log_px`` (exact), ``sample`` (clean model), ``encode``, ``decode``.
    """

    # The spread's learned mean transform f (``learned_spread.ResidualTransformKernel``),
    # applied to the decoder means inside ``expectation`` only (the spread likelihood
    # N(y; f(g(z)), sigma^2)); samples and decoder_params stay the clean model's. Set by the VAE.
    loc_transform = None

    enumerable = True

    def __init__(
        self, data_dim: int, latent: DiscreteLatent, hidden: int = 64,
        depth: int = 2, decoder: Decoder | None = None, network: Network | None = None,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.latent = latent
        decoder = decoder if decoder is not None else GaussianDecoder()
        self.deterministic = decoder.deterministic  # std 0: a likelihood only with spread noise
        self.image_shape = None if image_shape is None else tuple(int(v) for v in image_shape)
        network = network or MLP(hidden, depth)
        self.encoder = network.encoder(data_dim, latent.encoder_dim, self.image_shape)
        self.decoder = decoder.build(latent.state_dim, data_dim, hidden, depth, network, self.image_shape)
        if getattr(latent, "data_init", False):
            # Per-state offsets of the decoder mean, linear in the one-hot state: zero (a
            # no-op) until init_from_data places the states on training points.
            self.decoder.loc_path = nn.Linear(latent.state_dim, data_dim, bias=False)
            nn.init.zeros_(self.decoder.loc_path.weight)
        if getattr(latent, "learn_prior", False):
            init = latent.log_prior(torch.zeros(()))
            # Trained by the optimizer ("gradient"), or set by the M-step ("em": no gradient,
            # so the optimizer leaves it alone; it stays a parameter for checkpoints, DDP's
            # broadcast and the ensemble's stacking).
            self.prior_logits = nn.Parameter(init - init.mean(), requires_grad=not getattr(latent, "em_prior", False))

    def log_q(self, x: Tensor) -> Tensor:
        """log q(z | x) over the latent states, ``(B, K)``."""
        return self.latent.log_posterior(_float32(self.encoder(x)))

    def log_prior(self, like: Tensor) -> Tensor:
        """log p(z) for each state, ``(K,)``: the latent's, or the learned weights."""
        if hasattr(self, "prior_logits"):
            return torch.log_softmax(self.prior_logits.to(like.dtype), -1)
        return self.latent.log_prior(like)

    def prior(self) -> Distribution:
        """The prior p(z) as a ``torch.distributions`` object: the latent's, or a
        ``Categorical`` over the learned weights."""
        if hasattr(self, "prior_logits"):
            return Categorical(logits=self.log_prior(self.prior_logits.detach()))
        return self.latent.prior()

    def aggregate_posterior(self, y: Tensor) -> Tensor:
        """mean_b q(k | y_b) over the rows of ``y`` ``(B, D)``, ``(K,)``: the M-step's target."""
        return self.log_q(y).exp().mean(0)

    @torch.no_grad()
    def m_step(self, posterior_mean: Tensor, rate: float) -> None:
        """pi <- (1 - rate) pi + rate * ``posterior_mean``: the learned weights, in place."""
        self.prior_logits.copy_(m_step_logits(self.prior_logits, posterior_mean, rate))

    def decoder_params(self, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decoder mean and std for every latent state, ``(K, D)`` each."""
        like = like if like is not None else next(self.parameters())
        return self.decoder(self.latent.states(like))

    def _states_of(self, z: Tensor) -> Tensor:
        """Decoder inputs for ``z``: state indices ``(N,)`` (an integer tensor) or latent
        values as the decoder takes them (``(N, state_dim)``: one-hot rows for a
        categorical latent, 0/1 for a Bernoulli one)."""
        like = next(self.parameters())
        if not z.is_floating_point():
            k = self.latent.n_states
            if z.dim() != 1 or (len(z) and (int(z.min()) < 0 or int(z.max()) >= k)):
                seen = f", values {int(z.min())}..{int(z.max())}" if z.numel() else ""
                raise ValueError(f"state indices must be a 1-D integer tensor of values in 0..{k - 1}, got "
                                 f"shape {tuple(z.shape)}{seen}")
            return self.latent.states(like)[z.to(like.device)]
        width = self.latent.state_dim
        z = z.reshape(len(z), -1) if z.dim() == 1 and width == 1 else z
        if z.dim() != 2 or z.shape[1] != width:
            raise ValueError(f"z must be state indices (N,) (an integer tensor) or latent values (N, {width}), "
                             f"got shape {tuple(z.shape)}")
        return z.to(like)

    @property
    def needs_data_init(self) -> bool:
        return hasattr(self.decoder, "loc_path")

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Place the K decoder means on K training points spread over the data (farthest
        point sampling of ``x`` ``(N, D)``): loc_path's column k = point k - the network's
        own mean for state k, so that the means start exactly there."""
        loc = self.decoder.net(self.latent.states(x))[..., : self.data_dim]  # without the path
        self.decoder.loc_path.weight.copy_(state_offsets(x.to(loc), _float32(loc)))

    def draws(self, n: int, training: bool, generator: torch.Generator | None, like: Tensor) -> None:
        """An enumerated latent needs no noise: None."""
        return None

    def expectation(self, y: Tensor, log_lik: LogLik, eps: None = None) -> Expectation:
        """E_q log_lik by the exact sum over the K states, the exact KL and log p~(y).

        ``log_lik(u, scale)`` gets the residuals u = y_b - loc_k ``(B, K, D)`` and the
        decoder std ``(K, D)`` (None for a deterministic decoder)."""
        log_q = self.log_q(y)  # (B, K)
        loc, scale = self.decoder_params(y)  # (K, D)
        if self.loc_transform is not None:  # a learned spread's mean transform: y = f(x) + noise
            loc = self.loc_transform(loc)
        ll = log_lik(y[:, None, :] - loc, None if self.deterministic else scale)  # (B, K)
        log_prior = self.log_prior(y)
        t = elbo_terms(log_q, log_prior, ll)
        return Expectation(rec=t["rec"], kl=t["kl"], log_px=log_marginal(log_prior, ll), scale=scale)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) = logsumexp_z [log p(z) + log p(x|z)] per point, ``(B,)``."""
        if self.deterministic:
            raise ValueError("a deterministic decoder has no density: log p(x) is only defined "
                             "with spread noise (the spread objective's spread_log_px)")
        loc, scale = self.decoder_params(x)
        return log_marginal(self.log_prior(x), gaussian_log_lik(x, loc, scale))

    def encode(self, x: Tensor):
        """q(z | x) as a ``torch.distributions`` object."""
        return self.latent.posterior(_float32(self.encoder(x)))

    def decode(self, z: Tensor) -> Independent:
        """p(x | z) as a ``torch.distributions`` object. ``z``: state indices ``(N,)`` (an
        integer tensor, e.g. what ``sample(n, return_latent=True)`` returns) or latent
        values ``(N, state_dim)`` (one-hot rows for a categorical latent, 0/1 for a
        Bernoulli one)."""
        if self.deterministic:
            raise ValueError("a deterministic decoder has no density: p(x|z) = delta(x - loc); "
                             "use decoder_params() for loc")
        loc, scale = self.decoder(self._states_of(z))
        return Independent(Normal(loc, scale), 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               return_latent: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples of the clean model p(x) (no spread noise), ``(n, D)``; with
        ``return_latent`` also the state each came from, ``(n,)`` long."""
        like = next(self.parameters())
        loc, scale = self.decoder_params(like)  # (K, D)
        probs = self.log_prior(like).exp()
        device = generator.device if generator is not None else like.device
        k = torch.multinomial(probs.to(device), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.data_dim, generator=generator, device=device, dtype=like.dtype)
        k, eps = k.to(like.device), eps.to(like.device)
        x = loc[k] + scale[k] * eps
        return (x, k) if return_latent else x


class GaussianVAE(nn.Module):
    """Encoder, decoder and a sampled latent (``latents.SampledLatent``: the Gaussian
    z ~ N(0, I), or the hyperspherical one), reparameterised by standard normal draws.

    What the objectives need: ``deterministic``, ``draws`` (standard normal noise for the
    reparameterisation) and ``expectation`` (over those draws; the KL exact where the
    latent has it in closed form); the public maths: ``encode_params`` (the parameters of
    q(z|x)), ``log_px`` (the IWAE bound), ``prior``, ``sample``, ``encode``, ``decode``, and
    ``decoder_params`` at the latent's fixed probe points (for monitoring).
    """

    # The spread's learned mean transform f (``learned_spread.ResidualTransformKernel``),
    # applied to the decoder means inside ``expectation`` only (the spread likelihood
    # N(y; f(g(z)), sigma^2)); samples and decoder_params stay the clean model's. Set by the VAE.
    loc_transform = None

    enumerable = False

    def __init__(self, data_dim: int, latent: SampledLatent, hidden: int = 64, depth: int = 2,
                 decoder: Decoder | None = None, network: Network | None = None,
                 image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.latent = latent
        decoder = decoder if decoder is not None else GaussianDecoder()
        self.deterministic = decoder.deterministic
        self.image_shape = None if image_shape is None else tuple(int(v) for v in image_shape)
        network = network or MLP(hidden, depth)
        self.encoder = network.encoder(data_dim, latent.encoder_dim, self.image_shape)
        self.decoder = decoder.build(latent.state_dim, data_dim, hidden, depth, network, self.image_shape)
        if getattr(latent, "pca_init", False):
            # The direction's linear path (HypersphericalLatent(pca_init=True)): zero, so a
            # no-op, until init_from_data sets it from the data at the start of a fit.
            self.direction_path = nn.Linear(data_dim, latent.dim)
            nn.init.zeros_(self.direction_path.weight)
            nn.init.zeros_(self.direction_path.bias)

    @property
    def needs_data_init(self) -> bool:
        return hasattr(self, "direction_path")

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """The latent's data-dependent start: the direction's linear path set from the data
        ``x`` (``principal_directions``)."""
        weight, bias = principal_directions(x.to(self.direction_path.weight), self.latent.dim)
        self.direction_path.weight.copy_(weight)
        self.direction_path.bias.copy_(bias)

    def encode_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The parameters of q(z | x): loc and scale ``(B, d)`` each for the Gaussian
        latent, the mean direction ``(B, d)`` and the tangent std ``(B, 1)`` for the
        hyperspherical one."""
        out = _float32(self.encoder(x))
        if hasattr(self, "direction_path"):
            d = self.latent.dim
            out = torch.cat([out[..., :d] + _float32(self.direction_path(x.flatten(1))), out[..., d:]], -1)
        return self.latent.split(out)

    def draws(self, n: int, training: bool, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Standard normal draws for ``n`` points, ``(S, n, d)``: ``latent.n_samples`` in
        training, ``latent.iwae_samples`` in evaluation."""
        return self.latent.draw(n, training=training, generator=generator, like=like)

    def expectation(self, y: Tensor, log_lik: LogLik, eps: Tensor | None = None) -> Expectation:
        """E_q log_lik by the reparameterised draws ``eps`` ``(S, B, d)`` (default: fresh
        training draws from torch's global generator), the KL exact, and the IWAE bound on
        log p~(y) with the same draws. ``log_lik(u, scale)`` gets u = y - loc(z_s)
        ``(S, B, D)`` and the decoder std there (None for a deterministic decoder)."""
        if eps is None:
            eps = self.draws(len(y), training=True, generator=None, like=y)
        ll, log_ratio, kl, scale = importance_weights(self, y, eps, log_lik)  # (S, B), (S, B), (B,)
        return Expectation(rec=ll.mean(0), kl=kl, log_px=log_mean_exp(ll + log_ratio),
                           scale=scale.reshape(-1, scale.shape[-1]))

    def decoder_params(self, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decoder mean and std at the latent's probe points, ``(n_probe, D)`` each."""
        like = like if like is not None else next(self.parameters())
        return self.decoder(self.latent.states(like))

    def log_px(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The IWAE bound on log p(x) with ``latent.iwae_samples`` draws, ``(B,)``
        (draws from ``generator``; default a fixed seed, so evaluations are comparable)."""
        if self.deterministic:
            raise ValueError("a deterministic decoder has no density: log p(x) is only defined "
                             "with spread noise (the spread objective's spread_log_px)")
        generator = generator if generator is not None else torch.Generator(x.device).manual_seed(0)
        eps = self.draws(len(x), training=False, generator=generator, like=x)
        return self.expectation(x, normal_log_prob, eps).log_px

    def encode(self, x: Tensor) -> Distribution:
        """q(z | x) as a ``torch.distributions`` object."""
        return self.latent.posterior(self.encode_params(x))

    def prior(self) -> Distribution:
        """The prior p(z) as a ``torch.distributions`` object."""
        return self.latent.prior(next(self.parameters()))

    def decode(self, z: Tensor) -> Independent:
        if self.deterministic:
            raise ValueError("a deterministic decoder has no density: p(x|z) = delta(x - loc); "
                             "use decoder_params() for loc")
        loc, scale = self.decoder(z.to(next(self.parameters()).dtype))
        return Independent(Normal(loc, scale), 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               return_latent: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples of the clean model p(x) = E_z p(x|z), ``(n, D)``; with
        ``return_latent`` also the latent values they were decoded from, ``(n, d)``."""
        like = next(self.parameters())
        device = generator.device if generator is not None else like.device
        z = self.latent.sample_prior(n, generator, like)
        eps = torch.randn(n, self.data_dim, generator=generator, device=device, dtype=like.dtype)
        loc, scale = self.decoder(z)
        x = loc + scale * eps.to(like.device)
        return (x, z) if return_latent else x


def farthest_points(x: Tensor, k: int) -> Tensor:
    """Indices of ``k`` rows of ``x`` ``(N, D)`` spread over the data by farthest point
    sampling (Gonzalez 1985): the row nearest the mean first, then each time the row
    farthest from those chosen. Deterministic; ``(k,)`` long (rows repeat only if N < k)."""
    x = x.flatten(1)
    chosen = [int((x - x.mean(0)).square().sum(-1).argmin())]
    dist = (x - x[chosen[0]]).square().sum(-1)
    for _ in range(k - 1):
        chosen.append(int(dist.argmax()))
        dist = torch.minimum(dist, (x - x[chosen[-1]]).square().sum(-1))
    return torch.tensor(chosen)


def state_offsets(x: Tensor, loc: Tensor) -> Tensor:
    """The loc_path weight ``(D, K)`` that moves the network's state means ``loc`` ``(K, D)``
    onto K farthest-point training points of ``x``."""
    points = x.flatten(1)[farthest_points(x, loc.shape[0])]
    return (points - loc).T


def principal_directions(x: Tensor, d: int, gain: float = 3.0) -> tuple[Tensor, Tensor]:
    """A linear map x -> (x - mean) V^T onto the top ``d`` principal directions V ``(d, D)``
    of the rows of ``x`` ``(N, ...)`` (flattened), scaled so that its outputs have rms norm
    ``gain`` (3: it dominates a fresh network's output, ~0.1-0.5): ``(weight (d, D), bias
    (d,))``. A closed curve or surface centred in its span maps to an ellipse or ellipsoid
    around the origin, whose direction wraps the latent sphere once (degree one)."""
    x = x.flatten(1)
    centre = x.mean(0)
    v = torch.linalg.svd(x - centre, full_matrices=False).Vh[:d]  # (d, D)
    rms = ((x - centre) @ v.T).square().sum(-1).mean().sqrt().clamp_min(1e-12)
    v = v * (gain / rms)
    return v, -(v @ centre)


def importance_weights(vae: GaussianVAE, y: Tensor, eps: Tensor, log_lik: LogLik):
    """The pieces of log w_s = log p(y | z_s) + log p(z_s) - log q(z_s | y), z_s the
    latent's reparameterised draw (``latent.rsample``: loc + scale * eps_s for the Gaussian).

    Args: y ``(B, D)``; eps ``(S, B, d)``; ``log_lik(u, scale)`` the likelihood of
    u = y - loc(z_s) given the decoder std (the objective's, possibly kernel-convolved; None
    for a deterministic decoder).
    Returns log p(y | z_s) ``(S, B)``, log p(z_s) - log q(z_s | y) ``(S, B)``, KL(q || p)
    ``(B,)`` (analytic where the latent has it; otherwise the draws' estimate, the mean of
    -log_ratio) and the decoder std at the draws ``(S, B, D)``.
    """
    latent = vae.latent
    params = vae.encode_params(y)  # (B, d), ...
    z = latent.rsample(params, eps)  # (S, B, d)
    loc, scale = vae.decoder(z)  # (S, B, D)
    if vae.loc_transform is not None:  # a learned spread's mean transform: y = f(x) + noise
        loc = vae.loc_transform(loc)
    log_ratio = latent.log_ratio(z, eps, params)
    return log_lik(y - loc, None if vae.deterministic else scale), log_ratio, latent.kl(params, log_ratio), scale


def build_core(data_dim: int, latent, hidden: int = 64, depth: int = 2,
               decoder: Decoder | None = None, network: Network | None = None,
               image_shape: tuple[int, ...] | None = None) -> DiscreteVAE | GaussianVAE:
    """The VAE core for ``latent``: ``DiscreteVAE`` for an enumerable latent (exact sums),
    ``GaussianVAE`` otherwise (reparameterised draws). What a single run and each member
    of an ensemble build. ``network`` is the architecture (default ``MLP(hidden, depth)``);
    ``image_shape`` (C, H, W) where the data are images (a ``ConvNet`` needs it)."""
    core = DiscreteVAE if latent.enumerable else GaussianVAE
    return core(data_dim, latent, hidden=hidden, depth=depth, decoder=decoder, network=network,
                image_shape=image_shape)
