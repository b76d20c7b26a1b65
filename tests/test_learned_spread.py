"""The learned spread (lightning_vae.learned_spread): its exact low-rank Gaussian densities,
sampling, the trace constraint, the alignment metrics, the two-player loop's gradient
reversal, and bit-exact resume with the noise's own optimizer.

References are independent of the code under test: dense float64 linear algebra
(torch.distributions.MultivariateNormal), finite differences, a one-parameter game with a
known optimum, and an uninterrupted run.
"""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.distributions import MultivariateNormal

from lightning_vae.data.manifolds import Circle, Sphere, SwissRoll, TwoClusters
from lightning_vae.learned_spread import LearnedGaussianKernel, low_rank_log_normal
from lightning_vae.objectives import DenoisingELBO, SpreadELBO, Terms, VAEWarmStart
from lightning_vae.steps import KStepTraining

from conftest import gen, run_dirs

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
SHAPES = [(1, 1), (2, 1), (2, 2), (5, 3), (16, 16), (64, 1), (64, 8), (64, 64)]  # (D, R)


def _kernel(d: int, r: int, budget: float = 10.0, seed: int = 0) -> LearnedGaussianKernel:
    kernel = LearnedGaussianKernel(rank=r, budget=budget)
    kernel.build(d, generator=gen(seed))
    return kernel.double()


def _residuals(kernel: LearnedGaussianKernel, shape: tuple[int, ...], sigma: float, seed: int) -> torch.Tensor:
    """Draws of the kernel itself (mostly along L) and unit-scale ones (far off it at a small
    sigma): both regimes of the Mahalanobis term."""
    with torch.no_grad():
        u = kernel.sample(shape, max(sigma, 1e-3), gen(seed), dtype=F64)
    u[..., ::2, :] = torch.randn(u[..., ::2, :].shape, generator=gen(seed + 1), dtype=F64)
    return u


def _one_line_value_error(match_words: list[str], fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for words in match_words:
        assert words in msg, (words, msg)
    return msg


# --- exact densities ------------------------------------------------------------------------


@pytest.mark.parametrize("d,r", SHAPES, ids=[f"D{d}-R{r}" for d, r in SHAPES])
@pytest.mark.parametrize("sigma", [1e-3, 0.3, 2.0])
def test_log_prob_equals_the_dense_normal(d, r, sigma):
    """Woodbury and the determinant lemma: log N(u; 0, sigma^2 I + L L^T) to 1e-10 relative,
    also at sigma = 1e-3 against a budget of 10 (condition number 1e7)."""
    kernel = _kernel(d, r)
    u = _residuals(kernel, (6, d), sigma, seed=d + r)
    with torch.no_grad():
        got = kernel.log_prob(u, sigma)
        ref = MultivariateNormal(torch.zeros(d, dtype=F64), kernel.covariance(sigma)).log_prob(u)
    assert got.shape == (6,) and got.dtype == F64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("d,r", SHAPES, ids=[f"D{d}-R{r}" for d, r in SHAPES])
@pytest.mark.parametrize("sigma", [0.0, 1e-3, 0.3])
def test_convolved_log_prob_equals_the_dense_normal_with_a_broadcast_scale(d, r, sigma):
    """log N(u; 0, diag(scale^2 + sigma^2) + L L^T) with a per-state, per-axis decoder std
    ``(1, K, D)`` broadcast against residuals ``(B, K, D)``; sigma = 0 is allowed here."""
    k_states = 3
    kernel = _kernel(d, r)
    u = _residuals(kernel, (4, k_states, d), sigma, seed=d * r)
    scale = 1e-3 + torch.rand(1, k_states, d, generator=gen(7), dtype=F64)
    with torch.no_grad():
        got = kernel.convolved_log_prob(u, scale, sigma)
        cov = torch.diag_embed(scale[0].square() + sigma**2) + kernel.factor @ kernel.factor.T  # (K, D, D)
        ref = MultivariateNormal(torch.zeros(k_states, d, dtype=F64), cov).log_prob(u)
    assert got.shape == (4, k_states)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_low_rank_log_normal_forms_the_gram_matrix_per_distinct_variance():
    """A variance shared by the batch ``(D,)`` and the same one repeated per residual
    ``(B, D)`` give the same log-density (broadcasting is not a different formula)."""
    kernel = _kernel(5, 2)
    u = _residuals(kernel, (7, 5), 0.1, seed=3)
    var = 0.01 + torch.rand(5, generator=gen(4), dtype=F64)
    with torch.no_grad():
        shared = low_rank_log_normal(u, var, kernel.factor)
        repeated = low_rank_log_normal(u, var.expand(7, 5).clone(), kernel.factor)
    torch.testing.assert_close(shared, repeated, rtol=1e-13, atol=0)


@pytest.mark.parametrize("sigma,budget", [(0.1, 0.16), (1e-2, 10.0)])
def test_float32_matches_float64_at_d1024(sigma, budget):
    """At D = 1024, R = 20 the float32 densities are within 1e-5 (relative) of float64's."""
    k32 = LearnedGaussianKernel(rank=20, budget=budget)
    k32.build(1024, generator=gen(0))
    k64 = copy.deepcopy(k32).double()
    with torch.no_grad():
        u = k32.sample((8, 1024), sigma, gen(1))
        u[::2] += 0.05 * torch.randn(4, 1024, generator=gen(2))
        scale = 0.05 + 0.1 * torch.rand(1, 1024, generator=gen(3))
        pairs = [(k32.log_prob(u, sigma), k64.log_prob(u.double(), sigma)),
                 (k32.convolved_log_prob(u, scale, sigma), k64.convolved_log_prob(u.double(), scale.double(), sigma))]
    for v32, v64 in pairs:
        assert v32.dtype == torch.float32
        rel = ((v32.double() - v64).abs() / v64.abs()).max().item()
        assert rel < 1e-5, rel


def test_spread_log_density_is_the_mixture_over_the_points():
    """log p~(y_i) = logsumexp_j log N(y_i - x_j; 0, Sigma) - log N, dense reference."""
    d, n, b, sigma = 3, 50, 20, 0.05
    kernel = _kernel(d, 2, budget=0.5)
    x = torch.randn(n, d, generator=gen(0), dtype=F64)
    y = x[:b] + _residuals(kernel, (b, d), sigma, seed=1)
    y[-3:] += 5.0  # far from every x: the logsumexp's stability
    with torch.no_grad():
        got = kernel.spread_log_density(y, x, sigma)
        dense = MultivariateNormal(torch.zeros(d, dtype=F64), kernel.covariance(sigma))
        ref = torch.logsumexp(dense.log_prob(y[:, None, :] - x[None, :, :]), dim=1) - math.log(n)
    assert got.shape == (b,)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


# --- sampling -------------------------------------------------------------------------------


def test_samples_have_the_covariance_and_come_from_the_generator():
    """200k draws: empirical covariance = sigma^2 I + L L^T (max error < 2% of its largest
    entry, ~8 standard errors); u = sigma e1 + e2 L^T from the generator, e1 then e2, so a
    seed fixes the draws and another seed changes them."""
    d, r, sigma, n = 3, 2, 0.2, 200_000
    kernel = _kernel(d, r, budget=0.5, seed=1)
    with torch.no_grad():
        u = kernel.sample((n, d), sigma, gen(5), dtype=F64)
        cov = kernel.covariance(sigma)
    emp = u.T @ u / n
    assert (emp - cov).abs().max() < 0.02 * cov.abs().max()
    assert cov[0, 1].abs() > 0.05  # L L^T is not diagonal: the off-diagonal entries are tested
    with torch.no_grad():
        small = kernel.sample((5, d), sigma, gen(5), dtype=F64)
        g = gen(5)
        e1 = torch.randn(5, d, generator=g, dtype=F64)
        e2 = torch.randn(5, r, generator=g, dtype=F64)
        torch.testing.assert_close(small, sigma * e1 + e2 @ kernel.factor.T, rtol=1e-14, atol=1e-15)
        assert torch.equal(small, kernel.sample((5, d), sigma, gen(5), dtype=F64))
        assert not torch.equal(small, kernel.sample((5, d), sigma, gen(6), dtype=F64))
        assert kernel.sample((5, d), sigma, gen(5)).dtype == torch.float32


def test_sampling_is_reparameterised_in_the_direction():
    """The gradient of a function of the draws reaches V (autograd) and equals a central
    finite difference of the same draws (same seed): the draws are smooth in V."""
    d, r, sigma = 4, 2, 0.1
    kernel = _kernel(d, r, budget=0.5)
    w = torch.randn(d, generator=gen(1), dtype=F64)

    def f() -> torch.Tensor:
        return (kernel.sample((64, d), sigma, gen(2), dtype=F64) @ w).square().mean()

    f().backward()
    grad = kernel.direction.grad
    assert grad is not None and grad.abs().max() > 1e-3
    delta = torch.randn(d, r, generator=gen(3), dtype=F64)
    h = 1e-6
    with torch.no_grad():
        v = kernel.direction.detach().clone()
        kernel.direction.copy_(v + h * delta)
        up = f()
        kernel.direction.copy_(v - h * delta)
        down = f()
        kernel.direction.copy_(v)
    assert float((up - down) / (2 * h)) == pytest.approx(float((grad * delta).sum()), rel=1e-6)


# --- the constraint ---------------------------------------------------------------------------


def test_the_budget_holds_for_any_direction_and_renormalise_keeps_the_factor():
    """||L||_F^2 = budget after build and after any in-place change of V (any scale);
    renormalise sets ||V|| = 1 and leaves L as it was."""
    kernel = LearnedGaussianKernel(rank=3, budget=0.37)
    kernel.build(5, generator=gen(0))
    assert float(kernel.factor.detach().square().sum()) == pytest.approx(0.37, rel=1e-6)
    assert float(kernel.direction.detach().norm()) == pytest.approx(1.0, rel=1e-6)
    for scale in (123.0, 1e-4):
        with torch.no_grad():
            kernel.direction.add_(torch.randn(5, 3, generator=gen(1)))
            kernel.direction.mul_(scale)
        assert abs(float(kernel.direction.detach().norm()) - 1) > 0.1
        assert float(kernel.factor.detach().square().sum()) == pytest.approx(0.37, rel=1e-6)
        before = kernel.factor.detach().clone()
        kernel.renormalise()
        assert float(kernel.direction.detach().norm()) == pytest.approx(1.0, rel=1e-6)
        torch.testing.assert_close(kernel.factor.detach(), before, rtol=1e-6, atol=0)
    assert float(kernel.spectrum().sum()) == pytest.approx(0.37, rel=1e-6)  # eigenvalues of L L^T


def test_a_fit_keeps_the_budget_and_logs_the_spread_scalars(tmp_path):
    """Through the real CLI (8 steps): the noise optimizer took every step, V is back at
    unit norm after each, tr(L L^T) = budget in the checkpoint and at every logged step
    (budget_error < 1e-5), eigen_0 = budget (rank 1), total_variance = D sigma^2 + budget."""
    from conftest import fit
    from lightning_vae.model import VAE
    from lightning_vae.runs import read_scalars

    run = fit("seed_learned_spread.yaml", tmp_path, "--trainer.max_epochs=1", "--data.n_train=512",
              "--data.batch_size=64", "--trainer.log_every_n_steps=1")
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 8
    assert int(ckpt["optimizer_states"][1]["state"][0]["step"]) == 8  # the noise's Adam stepped every step
    model = VAE.load_from_checkpoint(last, map_location="cpu")
    kernel = model.spread
    assert isinstance(kernel, LearnedGaussianKernel) and kernel.direction.shape == (2, 1)
    assert float(kernel.factor.detach().square().sum()) == pytest.approx(0.16, rel=1e-6)
    assert float(kernel.direction.detach().norm()) == pytest.approx(1.0, abs=1e-6)

    scalars = read_scalars(run)
    for tag in ("spread/tangent_fraction", "spread/angle_mean", "spread/angle_max", "spread/eigen_0",
                "spread/divergence", "spread/data_log_density", "spread/total_variance"):
        assert tag in scalars, tag
    errors = dict(scalars["spread/budget_error"])
    assert sorted(errors) == list(range(8)) and all(v < 1e-5 for v in errors.values()), errors
    assert all(v == pytest.approx(0.16, abs=1e-5) for _, v in scalars["spread/eigen_0"])
    assert all(v == pytest.approx(2 * 0.1**2 + 0.16, rel=1e-5) for _, v in scalars["spread/total_variance"])
    assert all(0 <= v <= 1 for _, v in scalars["spread/tangent_fraction"])
    # divergence = loss + data_log_density, the step's own terms
    loss, density = dict(scalars["train/loss"]), dict(scalars["spread/data_log_density"])
    for step, value in scalars["spread/divergence"]:
        assert value == pytest.approx(loss[step] + density[step], abs=1e-5), step


class _MemoryLogger(pl.loggers.Logger):
    """Every log_metrics call, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_total_variance_is_logged_at_the_noise_level_of_its_step():
    """With an annealed sigma, spread/total_variance at step s is D sigma(s)^2 + budget, the
    sigma that train/noise_std logs at s (4 steps of a VAE in a plain Trainer)."""
    from lightning_vae.model import VAE
    from lightning_vae.schedules import LinearAnneal

    torch.manual_seed(0)
    objective = SpreadELBO(noise_std=LinearAnneal(start=0.3, end=0.1, steps=4), kernel=LearnedGaussianKernel())
    model = VAE(data_dim=2, objective=objective, lr_schedule="constant", hidden=8, depth=1)
    x = TwoClusters().sample(4 * 32, gen(0)).reshape(4, 1, 32, 2)
    logger = _MemoryLogger()
    trainer = pl.Trainer(max_steps=4, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, torch.utils.data.DataLoader(x, batch_size=None))
    logged: dict[int, dict] = {}
    for step, row in logger.rows:
        logged.setdefault(step, {}).update(row)
    assert sorted(logged) == [0, 1, 2, 3]
    assert [logged[s]["train/noise_std"] for s in range(4)] == pytest.approx([0.3, 0.25, 0.2, 0.15])
    for s in range(4):
        assert logged[s]["spread/total_variance"] == pytest.approx(2 * logged[s]["train/noise_std"] ** 2 + 0.16,
                                                                   rel=1e-6), s


# --- the two-player loop ------------------------------------------------------------------------


class _Game(KStepTraining, pl.LightningModule):
    """min_theta max_psi (theta - 1)^2 - (psi - 2)^2 through the K-step loop's two optimizers."""

    def __init__(self, reverse: bool = True, lr: float = 0.05) -> None:
        super().__init__()
        self._configure_steps("constant", 1)
        self.theta = torch.nn.Parameter(torch.tensor(0.0))
        self.adversary = torch.nn.Module()
        self.adversary.psi = torch.nn.Parameter(torch.tensor(0.0))
        self.reverse, self.lr = reverse, lr
        self.calls = {"reverse": 0, "after": 0}

    def step_terms(self, x, step, values=True):
        return Terms(loss=(self.theta - 1) ** 2 - (self.adversary.psi - 2) ** 2, values={})

    def reverse_adversary_gradients(self) -> None:
        self.calls["reverse"] += 1
        if self.reverse:
            self.adversary.psi.grad.neg_()

    def after_adversary_step(self) -> None:
        self.calls["after"] += 1

    def configure_optimizers(self):
        return [{"optimizer": torch.optim.SGD([self.theta], lr=self.lr)},
                {"optimizer": torch.optim.SGD(self.adversary.parameters(), lr=self.lr)}]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(10, 1, 4, 1), batch_size=None)  # groups of K = 1


def _play(reverse: bool) -> tuple[_Game, pl.Trainer]:
    game = _Game(reverse=reverse)
    trainer = pl.Trainer(max_steps=200, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(game)
    return game, trainer


def test_gradient_reversal_makes_the_adversary_ascend():
    """With the reversal, SGD reaches the saddle: theta -> 1 (descent), psi -> 2 (ascent);
    global_step counts the model's steps only, and both hooks run once a step. Without
    it, psi descends its -(psi - 2)^2 and runs away from 2: the sign is the reversal's."""
    game, trainer = _play(reverse=True)
    assert trainer.global_step == 200
    assert game.calls == {"reverse": 200, "after": 200}
    assert game.theta.item() == pytest.approx(1.0, abs=1e-3)
    assert game.adversary.psi.item() == pytest.approx(2.0, abs=1e-3)
    control, trainer = _play(reverse=False)
    assert trainer.global_step == 200
    assert control.theta.item() == pytest.approx(1.0, abs=1e-3)
    assert abs(control.adversary.psi.item() - 2) > 100  # |psi - 2| = 2 x 1.1^t


# --- alignment with the data manifold --------------------------------------------------------


@pytest.mark.parametrize("direction,fraction,angle", [((1.0, 0.0), 1.0, 90.0), ((0.0, 1.0), 0.0, 0.0),
                                                      ((1.0, 1.0), 0.5, 45.0)])
def test_alignment_on_the_two_clusters_line(direction, fraction, angle):
    """The seed's support is the first axis: noise along it is all tangent (90 degrees from
    the normal space), noise across it none (0 degrees), the diagonal half (45)."""
    manifold = TwoClusters()
    tangent = manifold.tangent(manifold.sample(16, gen(0)))
    assert tangent.shape == (16, 2, 1)
    assert torch.equal(tangent, torch.tensor([[1.0], [0.0]], dtype=F64).expand(16, 2, 1))
    kernel = LearnedGaussianKernel(rank=1, budget=0.16)
    kernel.build(2, generator=gen(0))
    with torch.no_grad():
        kernel.direction.copy_(torch.tensor(direction)[:, None] * 3.0)  # V's scale does not matter
    out = kernel.alignment(tangent)
    assert out["tangent_fraction"] == pytest.approx(fraction, abs=1e-6)
    assert out["angle_mean"] == pytest.approx(angle, abs=1e-4)
    assert out["angle_max"] == pytest.approx(angle, abs=1e-4)


def test_alignment_of_the_normal_plane_of_a_circle_in_r3():
    """Rank 2 spanning (any basis of) the normal plane at one point of a circle in R^3:
    fraction 0 and angles 0 there; over two points the fraction is the mean of the
    points' ||T^T L||^2 / budget. Angles need R <= D - d: absent for rank 2 on a line in R^2."""
    manifold = Circle(ambient_dim=3)
    x = manifold.sample(2, gen(0))
    tangent = manifold.tangent(x)  # (2, 3, 1)
    basis = torch.linalg.qr(torch.cat([tangent[0], torch.randn(3, 2, generator=gen(1), dtype=F64)], 1)).Q[:, 1:]
    kernel = LearnedGaussianKernel(rank=2, budget=0.5)
    kernel.build(3, generator=gen(0))
    with torch.no_grad():
        kernel.direction.copy_((basis @ torch.tensor([[2.0, 1.0], [0.5, -1.0]], dtype=F64)).float())
    at_point = kernel.alignment(tangent[:1])
    assert at_point["tangent_fraction"] == pytest.approx(0.0, abs=1e-6)
    assert at_point["angle_mean"] == pytest.approx(0.0, abs=1e-3)
    assert at_point["angle_max"] == pytest.approx(0.0, abs=1e-3)
    both = kernel.alignment(tangent)
    f = kernel.factor.detach().double()
    second = float((tangent[1].T @ f).square().sum() / f.square().sum())
    assert second > 0.01  # the other point's tangent is not in the first's normal plane
    assert both["tangent_fraction"] == pytest.approx(second / 2, rel=1e-5)
    assert both["angle_max"] > 1.0
    line = LearnedGaussianKernel(rank=2)
    line.build(2, generator=gen(0))
    assert "angle_mean" not in line.alignment(TwoClusters().tangent(torch.zeros(3, 2)))


@pytest.mark.parametrize("manifold", [Circle(), Circle(ambient_dim=5), Sphere(), Sphere(ambient_dim=6),
                                      Sphere(dim=4, ambient_dim=7), TwoClusters(ambient_dim=4)],
                         ids=["circle", "circle-R5", "sphere", "sphere-R6", "S3-R7", "clusters-R4"])
def test_tangent_bases_are_orthonormal_radial_free_and_in_the_embedding(manifold):
    """T^T T = I_d (d the intrinsic dimension); T is orthogonal to the radial direction x
    (circle, sphere); under an embedding T lies in the embedded span (E E^T T = T)."""
    x = manifold.sample(64, gen(0))
    t = manifold.tangent(x)
    d = manifold.intrinsic_dim
    assert manifold.has_tangent and t.shape == (64, manifold.dim, d) and t.dtype == F64
    torch.testing.assert_close(t.transpose(1, 2) @ t, torch.eye(d, dtype=F64).expand(64, d, d), rtol=0, atol=1e-12)
    if not isinstance(manifold, TwoClusters):
        radial = (x.double()[:, None, :] @ t).abs().max()
        assert radial < 1e-12, radial
    e = manifold.embedding
    if e is not None:
        torch.testing.assert_close(e @ (e.T @ t), t, rtol=0, atol=1e-12)


def test_manifolds_without_an_exact_tangent_say_so():
    assert not SwissRoll().has_tangent
    with pytest.raises(NotImplementedError, match="SwissRoll has no exact tangent space"):
        SwissRoll().tangent(torch.zeros(2, 3))
    assert all(m.has_tangent for m in (TwoClusters(), Circle(), Sphere()))


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,words", [
    ({"rank": 0}, ["rank must be an integer >= 1", "got 0"]),
    ({"rank": 1.5}, ["rank must be an integer >= 1", "got 1.5"]),
    ({"rank": True}, ["rank must be an integer >= 1", "got True"]),
    ({"budget": 0}, ["budget must be a finite number > 0", "got 0"]),
    ({"budget": float("nan")}, ["budget must be a finite number > 0", "got nan"]),
    ({"budget": float("inf")}, ["budget must be a finite number > 0", "got inf"]),
    ({"budget": -1.0}, ["budget must be a finite number > 0", "got -1.0"]),
    ({"ascent": "foo"}, ["ascent must be one of divergence, loss", "got 'foo'"]),
])
def test_bad_kernel_arguments_are_one_line_value_errors(kwargs, words):
    _one_line_value_error(words, LearnedGaussianKernel, **kwargs)


def test_bad_uses_of_a_learned_kernel_are_one_line_errors():
    """Rank above the data dimension at build; a learned kernel outside the spread ELBO
    (also behind a warm start); in a vectorised ensemble. The spread ELBO itself builds."""
    from lightning_vae.ensemble import EnsembleVAE
    from lightning_vae.model import VAE

    _one_line_value_error(["rank must be <= the data dimension 2", "got 3"],
                          LearnedGaussianKernel(rank=3).build, 2)
    for objective in (DenoisingELBO(kernel=LearnedGaussianKernel()),
                      VAEWarmStart(DenoisingELBO(kernel=LearnedGaussianKernel()), steps=10)):
        _one_line_value_error(["needs the spread ELBO", "SpreadELBO"], VAE, objective=objective)
    _one_line_value_error(["learned spread kernel", "one fit per seed"], EnsembleVAE, seeds=[0, 1],
                          objective=SpreadELBO(kernel=LearnedGaussianKernel()))
    with pytest.raises(RuntimeError, match=r"build\(data_dim\) has not been called"):
        LearnedGaussianKernel().factor
    for objective in (SpreadELBO(kernel=LearnedGaussianKernel(rank=2)),
                      VAEWarmStart(SpreadELBO(kernel=LearnedGaussianKernel(rank=2)), steps=10)):
        model = VAE(data_dim=3, objective=objective)
        assert model.spread.direction.shape == (3, 2)
        names = [n for n, _ in model.named_parameters()]
        assert "spread.direction" in names


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [
    pytest.param("epochs", marks=pytest.mark.slow),  # the killed-run test resumes at an epoch end too
    # Iteration-based (max_epochs -1, max_steps), cut at an epoch's end: Lightning's restart
    # counts that epoch's end twice (current_epoch one too high); the sampler's offset
    # (data/datamodule.py) keeps the uninterrupted run's shuffle. It served the epoch after.
    "steps",
])
def test_resume_is_bit_exact_with_the_noise_optimizer(bound, tmp_path):
    """16 steps straight, and 8 steps resumed from last.ckpt to 16: identical weights
    (spread.direction included), both optimizers' states and the noise generator. At a
    constant learning rate: the cosine schedule spans each run's own length."""
    from conftest import fit
    from lightning_vae.cli import main

    common = ["--data.n_train=512", "--data.batch_size=64", "--model.lr_schedule=constant"]
    if bound == "epochs":
        whole, half = ["--trainer.max_epochs=2"], ["--trainer.max_epochs=1"]
    else:
        whole = ["--trainer.max_epochs=-1", "--trainer.max_steps=16"]
        half = ["--trainer.max_epochs=-1", "--trainer.max_steps=8"]
    straight = fit("seed_learned_spread.yaml", tmp_path, *common, *whole)
    cut = fit("seed_learned_spread.yaml", tmp_path, *common, *half)
    at_cut = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert at_cut["global_step"] == 8 and int(at_cut["optimizer_states"][1]["state"][0]["step"]) == 8
    main(["fit", "--config", str(cut / "config.yaml"), "--ckpt_path", str(cut / "checkpoints" / "last.ckpt"), *whole])
    (resumed,) = [d for d in run_dirs(tmp_path, "seed_learned_spread") if d not in (straight, cut)]
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 16
    assert not torch.equal(a["state_dict"]["spread.direction"], at_cut["state_dict"]["spread.direction"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        assert sa["state"].keys() == sb["state"].keys()
        for i in sa["state"]:
            assert sa["state"][i].keys() == sb["state"][i].keys()
            assert all(torch.equal(sa["state"][i][n], sb["state"][i][n]) for n in sa["state"][i]), i
    assert int(b["optimizer_states"][1]["state"][0]["step"]) == 16
    assert torch.equal(a["noise_generator_state"], b["noise_generator_state"])
