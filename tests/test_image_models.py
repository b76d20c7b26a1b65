"""Convolutional cores, the objectives at image scale (D = 1024, float32 and bf16 against
float64) and the standard-VAE warm start."""

import math

import pytest
import torch

from lightning_vae.densities import normal_log_prob
from lightning_vae.kernels import GaussianKernel, LaplaceKernel, residual_log_lik
from lightning_vae.latents import CategoricalLatent, GaussianLatent
from lightning_vae.model import VAE
from lightning_vae.nets import MLP, ConvNet, DeterministicDecoder, GaussianDecoder, build_core
from lightning_vae.objectives import ELBO, SpreadELBO, VAEWarmStart


def squares(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Fading squares, flat ``(n, size*size)``: a centred 6x6 block of intensity U(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    c = size // 2
    x[:, :, c - 3: c + 3, c - 3: c + 3] = torch.rand(n, 1, 1, 1, generator=g)
    return x.flatten(1)


def conv_model(decoder=None, objective=None, latent=None, shape=(1, 32, 32), depth=3):
    torch.manual_seed(0)
    return VAE(data_dim=math.prod(shape), image_shape=list(shape), network=ConvNet(width=8, depth=depth),
               decoder=decoder or DeterministicDecoder(), objective=objective or SpreadELBO(0.1),
               latent=latent or GaussianLatent(dim=2))


@pytest.mark.parametrize("shape,depth", [((1, 32, 32), 3), ((1, 8, 8), 2), ((3, 16, 16), 4)])
@pytest.mark.parametrize("variance", ["per_axis", "shared", "fixed"])
def test_conv_decoder_gives_a_mean_and_std_per_pixel_for_any_leading_dims(shape, depth, variance):
    d = math.prod(shape)
    net = build_core(d, GaussianLatent(dim=3), decoder=GaussianDecoder(variance=variance, fixed_std=0.5),
                     network=ConvNet(width=4, depth=depth), image_shape=shape)
    z = torch.randn(5, 7, 3)  # (S, B, d): the draws of importance_weights
    loc, scale = net.decoder(z)
    assert loc.shape == scale.shape == (5, 7, d)
    assert (scale > 0).all()
    if variance == "fixed":
        assert torch.equal(scale, torch.full_like(scale, 0.5))
    if variance == "shared":  # one std per latent value, the same for every pixel
        assert torch.equal(scale, scale[..., :1].expand_as(scale))
    # The same z one at a time gives the same outputs: the leading dims are only a batch.
    assert torch.allclose(net.decoder(z[2, 3])[0], loc[2, 3], atol=1e-6)
    loc_q, scale_q = net.encode_params(torch.rand(4, d))
    assert loc_q.shape == scale_q.shape == (4, 3)


def test_every_image_is_scored_on_its_own():
    """No batch statistics (no batch norm): a batch's per-image values are each image's."""
    model = conv_model(decoder=GaussianDecoder(), objective=ELBO(), latent=CategoricalLatent(n_states=4))
    x = squares(6)
    assert torch.allclose(model.log_px(x)[:2], model.log_px(x[:2]), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kwargs,shape,match", [
    ({}, None, "ConvNet needs image data"),
    ({}, (1, 30, 30), "divisible by 8"),
    ({}, (1, 16, 16), "C\\*H\\*W = data_dim"),
])
def test_conv_net_misuse_is_one_line_naming_the_expected_value(kwargs, shape, match):
    with pytest.raises(ValueError, match=match) as e:
        ConvNet(width=4, depth=3, **kwargs).encoder(900, 4, shape)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [{"width": 0}, {"depth": 0}, {"width": 2.5}])
def test_conv_net_arguments_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ConvNet(**bad)


def test_the_mlp_network_is_the_default_architecture():
    torch.manual_seed(0)
    a = build_core(4, CategoricalLatent(n_states=3), hidden=16, depth=1)
    torch.manual_seed(0)
    b = build_core(4, CategoricalLatent(n_states=3), network=MLP(hidden=16, depth=1))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


# --- the likelihoods at D = 1024 ------------------------------------------------------------

CASES = [("gaussian", GaussianKernel(), True), ("gaussian", GaussianKernel(), False),
         ("laplace", LaplaceKernel(), True), ("laplace", LaplaceKernel(), False)]


def _residuals(dtype, n=8, d=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Residuals from pixel scale (0.5) down to far below the noise (1e-4), and a few far out.
    u = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(-4, math.log10(0.5), d,
                                                                            dtype=torch.float64)
    u[:, :8] *= 40.0
    scale = torch.full((n, d), 0.02, dtype=torch.float64) * torch.rand(n, d, generator=g, dtype=torch.float64) + 1e-3
    return u.to(dtype), scale.to(dtype)


@pytest.mark.parametrize("name,kernel,with_decoder_std", CASES)
@pytest.mark.parametrize("noise_std", [0.05, 0.3])
def test_convolved_log_likelihood_in_float32_matches_float64_at_d_1024(name, kernel, with_decoder_std, noise_std):
    u64, s64 = _residuals(torch.float64)
    exact = residual_log_lik(kernel, u64, s64 if with_decoder_std else None, noise_std)
    got = residual_log_lik(kernel, u64.float(), s64.float() if with_decoder_std else None, noise_std)
    assert got.dtype == torch.float32
    # float32 rounding of 1024 terms of size ~1e3 in total: measured <= 3e-7 relative.
    assert torch.allclose(got.double(), exact, rtol=2e-6, atol=0), (got.double() - exact).abs().max()
    # The gradient too (what training follows), per residual.
    u32 = u64.float().requires_grad_()
    residual_log_lik(kernel, u32, s64.float() if with_decoder_std else None, noise_std).sum().backward()
    u64g = u64.clone().requires_grad_()
    residual_log_lik(kernel, u64g, s64 if with_decoder_std else None, noise_std).sum().backward()
    assert torch.allclose(u32.grad.double(), u64g.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name,kernel,with_decoder_std", CASES)
def test_half_precision_residuals_are_scored_in_float32(name, kernel, with_decoder_std):
    """A bf16 model's residuals: the sum over 1024 pixels is taken in float32, so the
    result is the float64 value of the same (bf16-rounded) inputs to float32 precision;
    summed in bf16 it would be off by ~1e-2 relative."""
    u64, s64 = _residuals(torch.float64)
    u16, s16 = u64.bfloat16(), s64.bfloat16()
    got = residual_log_lik(kernel, u16, s16 if with_decoder_std else None, 0.1)
    assert got.dtype == torch.float32
    exact = residual_log_lik(kernel, u16.double(), s16.double() if with_decoder_std else None, 0.1)
    assert torch.allclose(got.double(), exact, rtol=2e-6, atol=0)


def test_a_bf16_autocast_step_matches_float32():
    model = conv_model(objective=SpreadELBO(0.1, kernel=LaplaceKernel()))
    x = squares(16)
    f32 = model.objective(x, model.net, torch.Generator().manual_seed(0), step=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b16 = model.objective(x, model.net, torch.Generator().manual_seed(0), step=1)
    assert b16.loss.dtype == torch.float32  # the network's outputs are upcast before the likelihood
    assert torch.isfinite(b16.loss)
    # bf16 convolutions round activations to 8 bits: measured 3e-4 relative here.
    assert abs(float(b16.loss) - float(f32.loss)) <= 1e-2 * abs(float(f32.loss))
    b16.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- the warm start -------------------------------------------------------------------------

def test_warm_start_is_the_fixed_variance_elbo_then_the_objective():
    inner = SpreadELBO(0.2, kernel=LaplaceKernel())
    warm = VAEWarmStart(inner, steps=3, std=0.5)
    model = conv_model(objective=warm)
    x = squares(8)
    eps = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(1))
    # Warm: the ELBO of the clean data under N(x; g(z), 0.5^2), the deterministic decoder's mean.
    t = warm.terms(x, model.net, step=2, eps=eps)
    loc_q, scale_q = model.net.encode_params(x)
    z = loc_q + scale_q * eps[0]
    rec = normal_log_prob(x - model.net.decoder(z)[0], torch.tensor(0.5))
    kl = 0.5 * (loc_q.square() + scale_q.square() - 1 - 2 * scale_q.log()).sum(-1)
    assert torch.allclose(t.loss, -(rec - kl).mean(), rtol=1e-6)
    assert float(t.values["warm_start"]) == 1.0
    assert torch.equal(warm.perturb(x, torch.Generator(), step=2), x)  # clean data: no noise drawn
    # After it, and in evaluation: exactly the inner objective.
    for step in (3, None):
        a, b = warm.terms(x, model.net, step=step, eps=eps), inner.terms(x, model.net, step=step, eps=eps)
        assert torch.equal(a.loss, b.loss)
    assert float(warm.terms(x, model.net, step=3, eps=eps).values["warm_start"]) == 0.0
    assert warm.noise_std == 0.2 and warm.trains_deterministic  # the inner objective's, for monitors


@pytest.mark.parametrize("kwargs,match", [({"steps": -1}, "steps"), ({"std": 0.0}, "std"),
                                          ({"objective": "ELBO"}, "objective")])
def test_warm_start_arguments_are_checked(kwargs, match):
    args = {"objective": SpreadELBO(0.1), "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        VAEWarmStart(**args)


def test_a_deterministic_decoder_still_needs_spread_after_the_warm_start():
    with pytest.raises(ValueError, match="spread"):
        conv_model(objective=VAEWarmStart(ELBO(), steps=10))
