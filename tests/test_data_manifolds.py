"""The manifold catalog: exact geometry, the shared embedding and noise, and ``PointCloud``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import gen

from lightning_vae.data import (
    Circle,
    GaussianBlobs,
    Helix,
    LineSegment,
    Manifold,
    ManifoldDataModule,
    PointCloud,
    Sphere,
    Spiral,
    SwissRoll,
    Torus,
    TwoClusters,
    TwoMoons,
)
from lightning_vae.data import curves
from lightning_vae.data.curves import curve_distance
from lightning_vae.data.manifolds import haar_orthogonal

CATALOG = [TwoClusters, LineSegment, Circle, TwoMoons, Spiral, SwissRoll, Sphere, Torus, Helix,
           GaussianBlobs]
WITH_COMPONENTS = [TwoClusters, TwoMoons, GaussianBlobs]
EMBEDDED = pytest.mark.parametrize("embedded", [False, True], ids=["natural", "embedded"])
CLASSES = pytest.mark.parametrize("cls", CATALOG, ids=lambda c: c.__name__)


pytestmark = pytest.mark.usefixtures("one_thread")


def make(cls, embedded: bool, **kwargs) -> Manifold:
    """Default parameters; embedded: two extra ambient dimensions and a rotation."""
    if embedded:
        kwargs["ambient_dim"] = cls(**kwargs).natural_dim + 2
    return cls(**kwargs)


def natural_points(m: Manifold, n: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    """Points near and off a natural-coordinate manifold, ``(n, natural_dim)`` float64."""
    p = m.sample(n, gen(seed)).double()
    return p + scale * torch.randn(p.shape, generator=gen(seed + 1), dtype=torch.float64)


# --- samples lie on the manifold; seeds ----------------------------------------------------


@CLASSES
@EMBEDDED
def test_noise_free_samples_lie_on_the_manifold(cls, embedded):
    m = make(cls, embedded)
    x = m.sample(1000, gen(0))
    assert x.shape == (1000, m.dim) and x.dtype == torch.float32
    assert m.dim == m.natural_dim + (2 if embedded else 0)
    assert m.has_geometry and m.intrinsic_dim < m.dim
    d = m.distance(x)
    assert d.shape == (1000,) and d.dtype == torch.float32
    assert float(d.max()) < 1e-5
    assert m.distance(x.double()).dtype == torch.float64
    assert m.sample(0, gen(0)).shape == (0, m.dim)


@CLASSES
@EMBEDDED
@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_same_generator_seed_same_samples(cls, embedded, noise_std):
    m = make(cls, embedded, noise_std=noise_std)  # the noise too comes from the generator
    a, b, c = m.sample(200, gen(3)), m.sample(200, gen(3)), m.sample(200, gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@CLASSES
def test_another_rotation_seed_other_points_same_distances(cls):
    n = cls().natural_dim
    m0, m1 = cls(ambient_dim=n + 2, rotation_seed=0), cls(ambient_dim=n + 2, rotation_seed=1)
    x0, x1 = m0.sample(300, gen(0)), m1.sample(300, gen(0))
    assert (x0 - x1).abs().max() > 0.1
    # Same natural draws, another rotation: x1 = x0 Q0 Q1^T.
    torch.testing.assert_close(x1.double(), x0.double() @ m0.rotation @ m1.rotation.T, atol=1e-6, rtol=0)
    # Any ambient point with the same coordinates u in each frame is as far from each.
    u = torch.randn(300, n + 2, generator=gen(5), dtype=torch.float64)
    torch.testing.assert_close(m0.distance(u @ m0.rotation.T), m1.distance(u @ m1.rotation.T),
                               atol=1e-9, rtol=0)


# --- the embedding -------------------------------------------------------------------------


@pytest.mark.parametrize("d,seed", [(2, 0), (5, 1), (7, 2)])
def test_rotation_is_orthogonal_and_fixed_by_its_seed(d, seed):
    q = haar_orthogonal(d, seed)
    torch.testing.assert_close(q.T @ q, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(q, haar_orthogonal(d, seed))
    assert not torch.allclose(q, haar_orthogonal(d, seed + 10))


@pytest.mark.parametrize("d,seed", [(3, 0), (6, 4)])
def test_rotation_is_the_qr_factor_with_positive_diagonal(d, seed):
    # Mezzadri's recipe for a Haar Q: the orthogonal factor of a Gaussian A in the QR with
    # a positive diagonal of R (that factorisation is unique): R = Q^T A upper triangular.
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    r = haar_orthogonal(d, seed).T @ a
    torch.testing.assert_close(r.tril(-1), torch.zeros(d, d, dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool((torch.diagonal(r) > 0).all())


def test_rotation_entries_have_mean_zero():
    # Haar: E Q_ij = 0. Plain QR (LAPACK's signs) makes Q_00 = -a_00 / |a_0| lean one way.
    q00 = torch.tensor([float(haar_orthogonal(2, s)[0, 0]) for s in range(300)])
    assert abs(float(q00.mean())) < 0.15  # std of the mean: sqrt(1/2 / 300) = 0.04
    assert 0.35 < float((q00 > 0).double().mean()) < 0.65


@CLASSES
def test_embedded_samples_are_the_natural_samples_rotated(cls):
    nat = cls()
    emb = cls(ambient_dim=nat.natural_dim + 2, rotation_seed=3)
    p = nat.sample(300, gen(1)).double()
    expected = torch.nn.functional.pad(p, (0, 2)) @ emb.rotation.T
    torch.testing.assert_close(emb.sample(300, gen(1)).double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(emb.embed(p), expected, atol=1e-12, rtol=0)


@CLASSES
def test_embedding_preserves_distances(cls):
    # x = [p, 0] Q^T + v with v orthogonal to the embedded subspace: d(x)^2 = d_nat(p)^2 + |v|^2.
    nat = cls()
    n = nat.natural_dim
    emb = cls(ambient_dim=n + 3, rotation_seed=7)
    p = natural_points(nat, 200, seed=2)
    w = 0.5 * torch.randn(200, 3, generator=gen(9), dtype=torch.float64)
    q = emb.rotation
    x = torch.nn.functional.pad(p, (0, 3)) @ q.T + w @ q[:, n:].T
    expected = torch.sqrt(nat.distance(p) ** 2 + (w * w).sum(1))
    torch.testing.assert_close(emb.distance(x), expected, atol=1e-9, rtol=0)
    # v = 0: the natural distance itself.
    torch.testing.assert_close(emb.distance(emb.embed(p)), nat.distance(p), atol=1e-9, rtol=0)


@CLASSES
@EMBEDDED
def test_noise_moves_points_off_the_manifold(cls, embedded):
    # Small isotropic noise: E d^2 ~ noise_std^2 * codimension (the normal part of the noise).
    sigma = 0.01
    m = make(cls, embedded, noise_std=sigma)
    x = m.sample(3000, gen(0))
    ratio = float((m.distance(x).double() ** 2).mean()) / (sigma**2 * (m.dim - m.intrinsic_dim))
    assert 0.85 < ratio < 1.15
    # The same generator without noise draws the clean points the noise was added to.
    clean = make(cls, embedded).sample(3000, gen(0))
    sq = float(((x - clean).double() ** 2).sum(1).mean())
    assert sq == pytest.approx(sigma**2 * m.dim, rel=0.1)


# --- distances on known points -------------------------------------------------------------

R5, S13 = math.sqrt(5), math.sqrt(3.25)
KNOWN = [
    (LineSegment(), [[0, 0.5], [1, 0], [2, 0], [4, -4], [-1.5, 0], [-0.3, 0]], [0.5, 0, 1, 5, 0.5, 0]),
    (Circle(radius=2.0), [[0, 0], [3, 4], [0, -2], [1, 0]], [2, 3, 0, 1]),
    # TwoMoons: outer arc, upper half of the unit circle; inner arc, lower half of the unit
    # circle about (1, 0.5). Outside an arc's angular range the nearer endpoint counts.
    (TwoMoons(), [[0, 0], [0, 2], [0, -1], [3, 0.5], [-1, 0], [2, 0.5], [1, 0], [0.5, 0.5]],
     [math.sqrt(1.25) - 1, 1, S13 - 1, 1, 0, 0, 0, 1 - math.sqrt(0.5)]),
    (TwoMoons(radius=2.0), [[0, 3], [2, -1], [4, 1]], [1, 0, 0]),
    (Sphere(dim=4), [[0, 0, 0, 0], [2, 0, 0, 0], [0.6, 0, 0.8, 0], [0, 3, 0, 4]], [1, 1, 0, 4]),
    (Torus(), [[0, 0, 0], [1, 0, 0], [1.4, 0, 0], [0, 0, 2], [0, 3, 0], [0, -0.6, 0], [0, 1, 0.4]],
     [0.6, 0.4, 0, R5 - 0.4, 1.6, 0, 0]),
    # Spiral(turns=2): t in [pi, 5 pi], radius t / (5 pi); starts at (-0.2, 0), ends at (-1, 0).
    (Spiral(), [[0, 0], [-3, 0], [-0.2, 0], [-1, 0], [-0.6, 0], [0, -0.3], [0.4, 0]],
     [0.2, 2, 0, 0, 0, 0, 0]),
    # SwissRoll: the spiral t in [1.5 pi, 4.5 pi] from (0, -1/3) to (0, 1) in (x1, x3).
    (SwissRoll(), [[0, 0.7, -1 / 3], [0, 2.0, -1 / 3], [0, -1, -1 / 3], [0, 0.5, 0], [0, 2.5, 0],
                   [0, 1.5, 2], [0, 0, 1]],
     [0, 0.5, 1, 1 / 3, math.hypot(1 / 3, 1), 1, 0]),
    # Helix: (cos t, sin t, t / (4 pi)), t in [0, 6 pi]: z from 0 to 1.5.
    (Helix(), [[0, 0, 0], [0, 0, -1], [0, 0, 3], [2, 0, 0], [1, 0, 0.5], [0, 0, 0.75], [1, 0, 1.5],
               [3, 0, 1.5]],
     [1, math.sqrt(2), S13, 1, 0, 1, 0, 2]),
    (GaussianBlobs(), [[0.3, -2, 3, 4, 0], [5, 5, 0, 0, 0], [0, 0, 0, 0, -2]], [5, 0, 2]),
    (TwoClusters(dim=3), [[10, 3, 4], [-2, 0, -1]], [5, 1]),
]


@pytest.mark.parametrize("m,points,expected", KNOWN, ids=[type(m).__name__ for m, _, _ in KNOWN])
def test_distance_on_known_points(m, points, expected):
    x = torch.tensor(points, dtype=torch.float64)
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(m.distance(x), expected, atol=1e-9, rtol=0)


def _brute_curve_distance(x: torch.Tensor, curve, t0: float, t1: float,
                          n: int = 1_000_000) -> torch.Tensor:
    """Distance to 10^6 points of the curve, by brute force (float64, chunks of points)."""
    c = curve(torch.linspace(t0, t1, n, dtype=torch.float64))  # (n, d)
    c_sq = (c * c).sum(1)
    out = [((xc * xc).sum(1, keepdim=True) - 2 * xc @ c.T + c_sq).amin(1).clamp(min=0).sqrt()
           for xc in x.split(8)]
    return torch.cat(out)


def _test_points(m: Manifold, n: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    near = m.sample(n // 2, g).double()
    near = near + 0.05 * torch.randn(near.shape, generator=g, dtype=torch.float64)
    far = 1.5 * (2 * torch.rand(n - n // 2, m.dim, generator=g, dtype=torch.float64) - 1)
    return torch.cat([near, far])


@pytest.mark.parametrize("m", [Spiral(), Spiral(turns=5.0), Helix(), Helix(pitch=0.1, turns=2.0),
                               SwissRoll()], ids=["spiral", "spiral5", "helix", "helix_tight", "swissroll"])
def test_numerical_curve_distance_matches_brute_force(m):
    x = _test_points(m, 32, seed=0)
    if isinstance(m, Helix):
        brute = _brute_curve_distance(x, m.curve, 0.0, m.t1)
    elif isinstance(m, Spiral):
        brute = _brute_curve_distance(x, m.curve, m.curve.t0, m.curve.t1)
    else:  # the swiss roll's spiral in (x1, x3), at heights inside [0, height]
        x[:, 1] = x[:, 1].clamp(0, m.height)
        brute = _brute_curve_distance(x[:, [0, 2]], m.curve, m.curve.t0, m.curve.t1)
    exact = m.distance(x)
    assert float((exact - brute).max()) < 1e-9  # the exact distance is the infimum
    assert float((brute - exact).max()) < 1e-5  # 10^6 points: arc spacing <= 2e-5


def test_curve_distance_identities(monkeypatch):
    # A segment c(t) = (t, 0), t in [0, 1]: endpoints count.
    seg = lambda t: torch.stack([t, torch.zeros_like(t)], -1)  # noqa: E731
    x = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.5, 3.0], [0.25, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(curve_distance(x, seg, 0.0, 1.0, 5),
                               torch.tensor([1.0, math.sqrt(2), 3.0, 0.0], dtype=torch.float64))
    # The outer moon as a parametric curve equals the closed form of TwoMoons.
    arc = lambda t: torch.stack([t.cos(), t.sin()], -1)  # noqa: E731  (unit circle, t in [0, pi])
    p = 1.5 * (2 * torch.rand(500, 2, generator=gen(0), dtype=torch.float64) - 1)
    closed = TwoMoons()._arc_distances(p)[:, 0]
    torch.testing.assert_close(curve_distance(p, arc, 0.0, math.pi, 129), closed, atol=1e-9, rtol=0)
    # A near-tie between two branches that the grid gets wrong: the parabola (t, t^2) seen
    # from (eps, 1.5) has minima near t = -1 and t = +1, the right one lower by ~4 eps. The
    # grid holds t = -1 exactly but misses t = +1 by h/2 (f'' = 8 there: f too high by
    # h^2 = 0.0095 > 4 eps), so its best point is in the wrong basin; refining the other
    # candidates still finds the right one.
    parabola = lambda t: torch.stack([t, t * t], -1)  # noqa: E731
    h = 2 / 20.5
    t0, t1 = -1 - 5 * h, -1 + 26 * h
    q = torch.tensor([[0.001, 1.5]], dtype=torch.float64)
    t = torch.linspace(t0, t1, 2_000_001, dtype=torch.float64)
    brute = (q - parabola(t)).norm(dim=1).min()
    assert float(curve_distance(q, parabola, t0, t1, 27)[0]) == pytest.approx(float(brute), abs=1e-10)
    # Chunking does not change the result.
    monkeypatch.setattr(curves, "_GRID_BYTES", 10 * 129 * 7)  # chunks of 7 points
    torch.testing.assert_close(curve_distance(p, arc, 0.0, math.pi, 129), closed, atol=1e-9, rtol=0)


# --- sampling measures ---------------------------------------------------------------------


def test_torus_is_uniform_in_area():
    # The outer half of the tube (cos phi > 0) holds (pi R + 2 r) / (2 pi R) of the area.
    m = Torus()
    x = m.sample(20_000, gen(0)).double()
    outer = float((torch.hypot(x[:, 0], x[:, 1]) > m.major_radius).double().mean())
    # 0.627 (0.5 if phi were uniform); binomial std 0.0034
    assert outer == pytest.approx((math.pi + 2 * 0.4) / (2 * math.pi), abs=0.015)


@pytest.mark.parametrize("m", [Spiral(), SwissRoll()], ids=["spiral", "swissroll"])
def test_spirals_are_uniform_in_arc_length(m):
    c = m.curve
    x = m.sample(20_000, gen(1)).double()
    xz = x if isinstance(m, Spiral) else x[:, [0, 2]]
    t = xz.norm(dim=1) / c.scale  # radius = scale * t
    assert float(t.min()) >= c.t0 - 1e-5 and float(t.max()) <= c.t1 + 1e-5
    s = c._arc_length(torch.tensor([c.t0, (c.t0 + c.t1) / 2, c.t1], dtype=torch.float64))
    expected = float((s[1] - s[0]) / (s[2] - s[0]))  # the inner half of t holds less length
    assert float((t < (c.t0 + c.t1) / 2).double().mean()) == pytest.approx(expected, abs=0.015)
    assert expected < 0.45


def test_other_sampling_measures():
    g = gen(2)
    comp = TwoMoons().component(TwoMoons().sample(20_000, g))
    assert float(comp.double().mean()) == pytest.approx(0.5, abs=0.015)
    z = Helix().sample(20_000, g)[:, 2].double()
    assert float(z.mean()) == pytest.approx(0.75, abs=0.015) and float(z.min()) >= 0
    a = LineSegment(length=3.0).sample(20_000, g)[:, 0].double()
    assert float(a.min()) >= -1.5 and float(a.max()) <= 1.5
    assert float(a.var()) == pytest.approx(9 / 12, rel=0.05)
    x = Sphere(dim=4).sample(20_000, g).double()
    second_moment = torch.eye(4, dtype=torch.float64) / 4  # uniform on S^3: E x x^T = I / 4
    torch.testing.assert_close(x.T @ x / len(x), second_moment, atol=0.015, rtol=0)


# --- components ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", WITH_COMPONENTS, ids=lambda c: c.__name__)
@EMBEDDED
def test_each_centre_is_its_own_component_and_on_the_support(cls, embedded):
    m = make(cls, embedded)
    c = m.centres
    assert c.shape == (m.n_components, m.dim) and c.dtype == torch.float32
    assert torch.equal(m.component(c), torch.arange(m.n_components))
    assert float(m.distance(c).max()) < 1e-6


@EMBEDDED
def test_components_of_known_points_and_samples(embedded):
    m = make(TwoMoons, embedded)
    p = torch.tensor([[0.0, 2.0], [0.0, -1.0], [3.0, 0.5], [-1.0, 0.0], [2.0, 0.5]], dtype=torch.float64)
    assert m.component(m.embed(p)).tolist() == [0, 1, 1, 0, 1]  # the nearer moon
    blobs = make(GaussianBlobs, embedded, blob_std=0.01)
    y = blobs.sample(500, gen(1))
    k = blobs.component(y)
    assert float((y - blobs.centres[k]).norm(dim=1).max()) < 0.1  # every point by its centre


def test_blob_centres_fixed_by_seed_inside_the_box():
    a, b = GaussianBlobs(spread=2.0), GaussianBlobs(spread=2.0, centre_seed=1)
    assert torch.equal(a.centres, GaussianBlobs(spread=2.0).centres)
    assert not torch.equal(a.centres, b.centres)
    assert float(a.centres[:, :2].abs().max()) <= 2.0 and torch.equal(a.centres[:, 2:], torch.zeros(3, 3))


@pytest.mark.parametrize("cls", [c for c in CATALOG if c not in WITH_COMPONENTS],
                         ids=lambda c: c.__name__)
def test_no_components(cls):
    m = cls()
    assert m.n_components == 0 and getattr(m, "centres", None) is None
    with pytest.raises(NotImplementedError, match=f"{cls.__name__} has no discrete components"):
        m.component(m.sample(3, gen(0)))


# --- TwoClusters unchanged -----------------------------------------------------------------

# Recorded from the seed's TwoClusters before the catalog existed (float32, as hex).
SEED_SAMPLES = ["-0x1.f797960000000p-1", "0x1.07d3d60000000p+0", "0x1.0560220000000p+0",
                "-0x1.d1a1c80000000p-1", "0x1.0f73620000000p+0", "0x1.14c2da0000000p+0",
                "0x1.fdb11c0000000p-1"]
SEED_SAMPLES_1D = ["-0x1.f363600000000p+0", "0x1.0bbdc00000000p+1", "0x1.0810320000000p+1",
                   "-0x1.ba72aa0000000p+0", "0x1.172d120000000p+1", "0x1.1f24460000000p+1",
                   "0x1.fc89aa0000000p+0"]


@pytest.mark.parametrize("kwargs,first", [
    ({}, SEED_SAMPLES), ({"dim": 3}, SEED_SAMPLES),
    ({"cluster_std": 0.3, "separation": 2.0, "dim": 1}, SEED_SAMPLES_1D)])
def test_two_clusters_samples_bit_for_bit(kwargs, first):
    m = TwoClusters(**kwargs)
    x = m.sample(7, gen(0))
    expected = torch.zeros(7, m.dim)
    expected[:, 0] = torch.tensor([float.fromhex(h) for h in first], dtype=torch.float32)
    assert x.dtype == torch.float32 and torch.equal(x, expected)


def test_two_clusters_geometry_unchanged():
    m = TwoClusters(separation=1.5, dim=3)
    assert torch.equal(m.centres, torch.tensor([[-1.5, 0.0, 0.0], [1.5, 0.0, 0.0]]))
    x = torch.tensor([[3.0, 4.0, 0.0], [-0.01, 0.0, 2.0], [0.2, -3.0, 4.0]])
    torch.testing.assert_close(m.distance(x), torch.tensor([4.0, 2.0, 5.0]))
    assert m.component(x).tolist() == [1, 0, 1]
    assert m.dim == 3 and m.intrinsic_dim == 1 and m.n_components == 2


# --- argument errors -----------------------------------------------------------------------

BAD = [
    (Torus, dict(ambient_dim=2), r"ambient_dim must be >= 3 \(the natural dimension of Torus\), got 2"),
    (TwoClusters, dict(dim=3, ambient_dim=2),
     r"ambient_dim must be >= 3 \(the natural dimension of TwoClusters\), got 2"),
    (Circle, dict(ambient_dim=2.5),
     r"ambient_dim must be an integer >= 2 \(the natural dimension of Circle\), got 2.5"),
    (Circle, dict(rotation_seed=-1), r"rotation_seed must be >= 0, got -1"),
    (Circle, dict(noise_std=-0.1), r"noise_std must be >= 0, got -0.1"),
    (Circle, dict(noise_std=float("nan")), r"noise_std must be >= 0, got nan"),
    (Circle, dict(noise_std=float("inf")), r"noise_std must be finite, got inf"),
    (Circle, dict(radius=0), r"radius must be > 0, got 0"),
    (Circle, dict(radius="1"), r"radius must be a number > 0, got '1'"),
    (LineSegment, dict(length=-1.0), r"length must be > 0, got -1.0"),
    (TwoMoons, dict(radius=float("nan")), r"radius must be > 0, got nan"),
    (Spiral, dict(turns=0.0), r"turns must be > 0, got 0.0"),
    (SwissRoll, dict(height=0), r"height must be > 0, got 0"),
    (Sphere, dict(radius=-2), r"radius must be > 0, got -2"),
    (Sphere, dict(dim=1), r"dim must be >= 2, got 1"),
    (Torus, dict(major_radius=0), r"major_radius must be > 0, got 0"),
    (Torus, dict(minor_radius=1.0), r"minor_radius must be < major_radius \(1.0\), got 1.0"),
    (Helix, dict(pitch=0), r"pitch must be > 0, got 0"),
    (Helix, dict(turns=-1), r"turns must be > 0, got -1"),
    (Helix, dict(radius=float("inf")), r"radius must be finite, got inf"),
    (GaussianBlobs, dict(n_blobs=0), r"n_blobs must be >= 1, got 0"),
    (GaussianBlobs, dict(subspace_dim=6), r"subspace_dim must be <= dim \(5\), got 6"),
    (GaussianBlobs, dict(subspace_dim=0), r"subspace_dim must be >= 1, got 0"),
    (GaussianBlobs, dict(blob_std=-1.0), r"blob_std must be >= 0, got -1.0"),
    (GaussianBlobs, dict(spread=0.0), r"spread must be > 0, got 0.0"),
    (GaussianBlobs, dict(centre_seed=-3), r"centre_seed must be >= 0, got -3"),
    (TwoClusters, dict(cluster_std=float("nan")), r"cluster_std must be >= 0, got nan"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD,
                         ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD])
def test_bad_arguments_raise_one_line(cls, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$") as e:
        cls(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_calls_raise():
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 2\), got \(3, 3\)$"):
        Circle().distance(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 5\), got \(4,\)$"):
        Circle(ambient_dim=5).distance(torch.zeros(4))
    with pytest.raises(ValueError, match=r"^n must be >= 0, got -1$"):
        Circle().sample(-1, gen(0))


# --- PointCloud ----------------------------------------------------------------------------


@pytest.fixture
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(40, 3))  # float64


def _write(tmp_path, name: str, arr) -> str:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, arr)
    elif name.endswith(".pt"):
        torch.save(arr if not isinstance(arr, np.ndarray) else torch.from_numpy(arr), path)
    else:
        path.write_text(arr)
    return str(path)


def _csv(arr: np.ndarray, header: str | None) -> str:
    lines = ([header] if header else []) + [",".join(repr(float(v)) for v in row) for row in arr]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt", ["npy", "pt", "csv", "csv_header"])
def test_point_cloud_round_trips(tmp_path, cloud, fmt):
    if fmt.startswith("csv"):
        path = _write(tmp_path, "data.csv", _csv(cloud, "x,y,z" if fmt == "csv_header" else None))
    else:
        path = _write(tmp_path, f"data.{fmt}", cloud)
    m = PointCloud(path)
    expected = torch.from_numpy(cloud).to(torch.float32)
    assert torch.equal(m.points, expected)
    assert m.dim == 3 and m.intrinsic_dim is None and m.n_components == 0 and not m.has_geometry
    assert getattr(m, "centres", None) is None
    # All rows: a permutation of the file; fewer rows: distinct rows; the generator decides the order.
    x = m.sample(40, gen(0))
    assert x.dtype == torch.float32
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, expected.tolist()))
    assert not torch.equal(x, expected)
    y = m.sample(25, gen(1))
    assert len(set(map(tuple, y.tolist()))) == 25
    assert torch.equal(y, m.sample(25, gen(1))) and not torch.equal(y, m.sample(25, gen(2)))


def test_point_cloud_datamodule_splits_are_disjoint(tmp_path, cloud):
    dm = ManifoldDataModule(manifold=PointCloud(_write(tmp_path, "data.npy", cloud)), n_train=24,
                            n_val=10, n_test=6, batch_size=8, data_seed=3, shuffle_seed=0)
    dm.setup("fit")
    assert dm.data_dim == 3
    rows = [set(map(tuple, s.tolist())) for s in (dm.train_x, dm.val_x, dm.test_x)]
    assert [len(r) for r in rows] == [24, 10, 6]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert set().union(*rows) == set(map(tuple, torch.from_numpy(cloud).float().tolist()))


def test_point_cloud_embedding_and_noise(tmp_path, cloud):
    path = _write(tmp_path, "data.npy", cloud)
    m = PointCloud(path, ambient_dim=5, rotation_seed=1)
    x = m.sample(40, gen(0)).double()
    assert x.shape == (40, 5)
    raw = PointCloud(path).sample(40, gen(0)).double()
    torch.testing.assert_close(x, torch.nn.functional.pad(raw, (0, 2)) @ m.rotation.T, atol=1e-6, rtol=0)
    noisy = PointCloud(path, noise_std=0.1).sample(40, gen(0)).double()  # the same rows, plus noise
    assert float(((noisy - raw) ** 2).sum(1).mean()) == pytest.approx(0.1**2 * 3, rel=0.4)  # 120 squares


def test_point_cloud_has_no_geometry(tmp_path, cloud):
    m = PointCloud(_write(tmp_path, "data.npy", cloud))
    for method in (m.distance, m.component):
        with pytest.raises(NotImplementedError,
                           match=r"^PointCloud\('.*data\.npy'\) has no known manifold: "
                                 r"geometry-based metrics are skipped$"):
            method(torch.zeros(2, 3))


def test_point_cloud_too_few_points(tmp_path, cloud):
    m = PointCloud(_write(tmp_path, "data.npy", cloud))
    with pytest.raises(ValueError, match=r"data\.npy holds 40 points; "
                                         r"the splits need 41 \(n_train \+ n_val \+ n_test\)$"):
        m.sample(41, gen(0))
    dm = ManifoldDataModule(manifold=m, n_train=30, n_val=10, n_test=5, batch_size=10)
    with pytest.raises(ValueError, match=r"holds 40 points; the splits need 45 "):
        dm.setup("fit")


def test_point_cloud_bad_files(tmp_path, cloud):
    def fails(exc, message, path):
        with pytest.raises(exc, match=message) as e:
            PointCloud(path)
        assert "\n" not in str(e.value)

    fails(FileNotFoundError, r"^point cloud file not found: .*missing\.npy$",
          str(tmp_path / "missing.npy"))
    txt = tmp_path / "data.txt"
    txt.write_text("1,2\n")
    fails(ValueError, r"data\.txt: unsupported file type '\.txt', expected one of \.npy, \.pt, \.csv$",
          str(txt))
    fails(ValueError, r"data\.npy must hold a 2-D array \(points x coordinates\), got shape \(40,\)$",
          _write(tmp_path, "data.npy", cloud[:, 0]))
    fails(ValueError, r"cube\.pt must hold a 2-D array \(points x coordinates\), got shape \(2, 4, 5\)$",
          _write(tmp_path, "cube.pt", torch.zeros(2, 4, 5)))
    bad = cloud.copy()
    bad[3, 1], bad[7, 0], bad[7, 2] = np.nan, np.inf, 1e40  # 1e40 overflows float32
    fails(ValueError, r"bad\.npy holds 3 non-finite values \(NaN, inf, or beyond float32\); "
          r"the first is in row 3 \(counting data rows from 0\)$", _write(tmp_path, "bad.npy", bad))
    fails(ValueError, r"bad\.csv holds 1 non-finite values .* in row 3 ",
          _write(tmp_path, "bad.csv", "a,b,c\n1,2,3\n4,5,6\n7,8,9\n1,nan,2\n"))
    fails(ValueError, r"dict\.pt must hold a tensor, got dict$",
          _write(tmp_path, "dict.pt", {"x": torch.zeros(3, 2)}))
    fails(ValueError, r"words\.csv is not a numeric CSV: ",
          _write(tmp_path, "words.csv", "x,y\n1,2\n3,oops\n"))
    fails(ValueError, r"empty\.csv holds no points", _write(tmp_path, "empty.csv", "x,y\n"))


# --- configs ----------------------------------------------------------------------------------


def test_manifolds_build_from_class_path_and_document_shared_arguments(tmp_path, cloud):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Manifold, "manifold")
    path = _write(tmp_path, "data.npy", cloud)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    built = []
    for class_path, init_args in [
        ("lightning_vae.data.Torus", {"minor_radius": 0.3, "ambient_dim": 5, "noise_std": 0.01}),
        ("lightning_vae.data.PointCloud", {"path": path}),
    ]:
        cfg = parser.parse_object({"manifold": {"class_path": class_path, "init_args": init_args}})
        built.append(instantiate(cfg).manifold)
    torus, points = built
    assert type(torus) is Torus and (torus.minor_radius, torus.dim, torus.noise_std) == (0.3, 5, 0.01)
    assert type(points) is PointCloud and points.dim == 3
    # The shared arguments are documented in every subclass's Args: section (--help text).
    for cls in [*CATALOG, PointCloud]:
        assert "ambient_dim:" in cls.__doc__ and "noise_std:" in cls.__doc__, cls.__name__
