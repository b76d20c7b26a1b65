"""Image data sets as manifolds (lightning_vae/data/images.py): procedural images with an
exact generator and its inversion, scikit-learn's digits, and a user's image files."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from lightning_vae.data import Digits, FadingSquare, ImageFiles, ImageManifold, ManifoldDataModule, Sprites

# torch.func's first calls warn that torch.jit.script (used inside torch) is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:DeprecationWarning")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SPRITES = {
    "disc2d": lambda: Sprites(),
    "disc3d": lambda: Sprites(scale_range=(1.5, 4.0)),
    "square2d": lambda: Sprites(shape="square"),
    "square3d": lambda: Sprites(shape="square", scale_range=(1.5, 3.5), channels=3),
}


def orthogonal_offsets(m: ImageManifold, theta: torch.Tensor, g: torch.Generator, lo: float = 0.05,
                       hi: float = 0.2) -> torch.Tensor:
    """Random offsets delta ``(n, D)`` orthogonal to the tangent space of the manifold at
    each theta (Jacobian by autodiff of ``generate``, independent of the inversion's
    ``_jacobian``), of norm lo-hi times the image's norm."""
    from torch.func import jacfwd, vmap

    jac = vmap(jacfwd(lambda t: m.generate(t.unsqueeze(0))[0]))(theta)  # (n, D, p)
    q, _ = torch.linalg.qr(jac)
    delta = torch.randn(len(theta), m.dim, generator=g, dtype=torch.float64)
    delta = delta - (q @ (q.transpose(1, 2) @ delta.unsqueeze(-1))).squeeze(-1)
    frac = lo + (hi - lo) * torch.rand(len(theta), 1, generator=g, dtype=torch.float64)
    return delta / delta.norm(dim=1, keepdim=True) * frac * m.generate(theta).norm(dim=1, keepdim=True)


# --- shared behaviour ----------------------------------------------------------------------

@pytest.mark.parametrize("make", [FadingSquare, lambda: FadingSquare(size=8, square=3, channels=3, noise_std=0.1),
                                  *SPRITES.values()])
def test_procedural_shapes_and_seeds(make):
    m = make()
    c, h, w = m.image_shape
    assert m.dim == c * h * w and m.intrinsic_dim == len(m.theta_names) and m.has_geometry
    a, b, other = m.sample(50, gen(3)), m.sample(50, gen(3)), m.sample(50, gen(4))
    assert a.dtype == torch.float32 and a.shape == (50, m.dim)
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert m.images(a).shape == (50, c, h, w)
    assert torch.equal(m.images(a).reshape(50, -1), a)  # row-major over (C, H, W)
    # sample_with_theta returns the very points sample draws, and the parameters in the box
    x, theta = m.sample_with_theta(50, gen(3))
    assert torch.equal(x, a) and theta.dtype == torch.float64
    assert (theta >= m.theta_low).all() and (theta <= m.theta_high).all()
    if m.noise_std == 0:
        assert torch.allclose(m.generate(theta).float(), a)
    else:  # noise of the stated std around the clean images
        resid = a.double() - m.generate(theta)
        assert abs(float(resid.std()) - m.noise_std) < 0.01


def test_image_classes_document_their_own_arguments_only():
    for cls in (FadingSquare, Sprites, Digits, ImageFiles):
        assert "noise_std:" in cls.__doc__ and "ambient_dim:" not in cls.__doc__, cls.__name__
        assert "rotation_seed" not in cls.__doc__


def test_manifolds_build_from_class_path():
    from jsonargparse import ArgumentParser

    from lightning_vae.data import Manifold

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Manifold, "manifold")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = parser.parse_object({"manifold": {"class_path": "lightning_vae.data.Sprites",
                                            "init_args": {"scale_range": [1.0, 3.0], "noise_std": 0.01}}})
    m = instantiate(cfg).manifold
    assert type(m) is Sprites and m.scale_range == (1.0, 3.0) and m.intrinsic_dim == 3 and m.noise_std == 0.01


# --- FadingSquare ----------------------------------------------------------------------------

def test_fading_square_values_and_uniform_intensity():
    m = FadingSquare(size=10, square=4, channels=2)
    x = m.sample(4000, gen(0))
    img = m.images(x)  # (N, 2, 10, 10)
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[3:7, 3:7] = True
    assert (img[:, :, ~inside] == 0).all()
    block = img[:, :, inside].reshape(len(x), -1)
    v = block[:, 0]
    assert (block == v[:, None]).all()  # constant in the square, in every channel
    assert (v > 0).all() and (v < 1).all()
    # Kolmogorov-Smirnov against U(0, 1): the 0.1 % critical value is 1.95 / sqrt(n).
    s = v.double().sort().values
    n = len(s)
    ks = torch.maximum(torch.arange(1, n + 1) / n - s, s - torch.arange(n) / n).max()
    assert float(ks) < 1.95 / math.sqrt(n)


def test_fading_square_distance_exact_against_brute_force():
    m = FadingSquare()
    g = gen(1)
    theta = m.sample_theta(200, g)
    clean = m.generate(theta)
    assert torch.allclose(m.invert(clean), theta, atol=1e-12)
    assert float(m.distance(clean).max()) < 1e-12
    delta = orthogonal_offsets(m, theta, g, 0.05, 0.2)
    far = torch.rand(100, m.dim, generator=g, dtype=torch.float64)  # off the segment, beyond its ends
    x = torch.cat([clean + delta, far, clean + 0.1 * torch.randn(clean.shape, generator=g, dtype=torch.float64)])
    d = m.distance(x)
    assert d.dtype == torch.float64
    rel = (d[:200] - delta.norm(dim=1)).abs() / delta.norm(dim=1)
    assert float(rel.max()) < 1e-10  # a segment has no curvature: exact
    # Independent brute force: a dense grid over v (step 5e-5), minimum by direct search.
    v = torch.linspace(0, 1, 20_001, dtype=torch.float64)
    s = m.template
    # |x - v s|^2 = |x|^2 - 2 v <x, s> + v^2 |s|^2, for all v at once
    d2 = (x * x).sum(1, keepdim=True) - 2 * (x @ s)[:, None] * v + (s @ s) * v**2
    brute = d2.min(1).values.clamp(min=0).sqrt()
    assert float((d - brute).max()) < 1e-9  # never above the brute-force minimum
    assert float((brute - d).max()) < 1e-4  # and the grid's step bounds how far below
    # the generic inversion (grid + Levenberg-Marquardt) agrees with the closed form
    theta_lm, cost = ImageManifold._invert64(m, x)
    assert float((theta_lm - m.invert(x)).abs().max()) < 1e-6
    assert float((cost.sqrt() - d).abs().max()) < 1e-8


@pytest.mark.parametrize("kwargs, match", [
    ({"square": 40}, "square must be <= size"),
    ({"size": 0}, "size must be >= 1"),
    ({"square": 2.5}, "square must be an integer"),
    ({"channels": 0}, "channels must be >= 1"),
    ({"noise_std": -1.0}, "noise_std must be >= 0"),
])
def test_fading_square_validates(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        FadingSquare(**kwargs)
    assert "\n" not in str(e.value)


# --- Sprites -------------------------------------------------------------------------------

def test_sprites_images():
    m = Sprites(size=16, radius=3.0, softness=0.2)
    x = m.generate(torch.tensor([[5.0, 9.0]], dtype=torch.float64))
    img = m.images(x)[0, 0]
    assert img.shape == (16, 16) and float(img[9, 5]) > 0.99  # row v = 9, column u = 5
    assert float(img[9, 5 + 5]) < 1e-3 and float(img[0, 0]) < 1e-3
    # on the edge, r - d = 0 (d is rounded off near the centre: 0.0004 px further here)
    assert float(img[9, 8]) == pytest.approx(0.5, abs=2e-3)
    sq = Sprites(size=16, shape="square", radius=3.0, softness=0.2)
    corner = sq.images(sq.generate(torch.tensor([[8.0, 8.0]], dtype=torch.float64)))[0, 0]
    disc = m.images(m.generate(torch.tensor([[8.0, 8.0]], dtype=torch.float64)))[0, 0]
    assert float(corner[6, 6]) > 0.95 and float(disc[6, 6]) < 0.75
    assert float(corner[6, 5]) > 0.45 and float(disc[6, 5]) < 0.05  # the square's corners are filled
    assert float(corner[8, 5]) == pytest.approx(0.5, abs=1e-6)  # on the edge (not rounded off there)
    # the box keeps sprites inside: theta in [r, size - 1 - r]
    assert m.theta_low.tolist() == [3.0, 3.0] and m.theta_high.tolist() == [12.0, 12.0]
    assert Sprites(size=12).radius == 2.0
    assert Sprites(scale_range=(1.0, 3.0)).theta_high.tolist() == [12.0, 12.0, 3.0]


@pytest.mark.parametrize("name", list(SPRITES))
def test_sprites_closed_form_derivatives_match_autodiff(name):
    m = SPRITES[name]()
    theta = m.sample_theta(20, gen(2))
    out, jac = m._jacobian(theta)
    out_ad, jac_ad = ImageManifold._jacobian(m, theta)  # forward-mode autodiff
    assert torch.allclose(out, out_ad) and torch.allclose(jac, jac_ad, atol=1e-10)
    assert torch.isfinite(jac).all()
    r = torch.randn(20, m.dim, generator=gen(3), dtype=torch.float64)
    curv, curv_ad = m._curvature(theta, r), ImageManifold._curvature(m, theta, r)
    assert torch.allclose(curv, curv_ad, atol=1e-10) and float(curv_ad.abs().max()) > 0.1
    # no NaN where a pixel centre meets the sprite's centre
    grid_theta = torch.tensor([[4.0, 5.0] + [2.0] * (m.intrinsic_dim - 2)], dtype=torch.float64)
    assert torch.isfinite(m._jacobian(grid_theta)[1]).all()


@pytest.mark.parametrize("name", list(SPRITES))
def test_sprites_invert_and_distance(name):
    m = SPRITES[name]()
    g = gen(5)
    theta = m.sample_theta(120, g)
    clean = m.generate(theta)
    # 1. noise free: theta recovered to 1e-6 (measured ~1e-15), distance < 1e-6
    assert float((m.invert(clean) - theta).abs().max()) < 1e-6
    assert float(m.distance(clean).max()) < 1e-6
    assert float(m.distance(clean.float()).max()) < 1e-3  # float32 input: float32 rounding
    # 2. off the manifold along the normal space: distance == |delta| to a relative 1e-3
    #    (measured ~1e-15: theta stays a local minimum at these offsets)
    delta = orthogonal_offsets(m, theta, g, 0.05, 0.2)
    d = m.distance(clean + delta)
    rel = (d - delta.norm(dim=1)).abs() / delta.norm(dim=1)
    assert float(rel.max()) < 1e-3, float(rel.max())
    assert float((m.invert(clean + delta) - theta).abs().max()) < 1e-3
    # 3. a minimum: never above the distance to any of 3,000 random images of the manifold,
    #    for points near and far (uniform noise images) from it
    dense = m.generate(m.sample_theta(3000, g))
    far = torch.rand(60, m.dim, generator=g, dtype=torch.float64)
    x = torch.cat([clean[:60] + 3 * delta[:60], far])
    excess = m.distance(x) - torch.cdist(x, dense).min(1).values
    assert float(excess.max()) <= 1e-9, float(excess.max())


def test_sprites_distance_respects_the_box():
    # A sprite centred outside the box (beyond its edge): the nearest point is on the edge.
    m = Sprites(size=16)
    x = m.generate(torch.tensor([[0.5, 8.0]], dtype=torch.float64))
    theta = m.invert(x)
    assert float(theta[0, 0]) == pytest.approx(float(m.theta_low[0]), abs=1e-9)
    assert float(m.distance(x)[0]) > 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": "star"}, "shape must be one of 'disc', 'square'"),
    ({"radius": 8.0}, r"radius must be < 7.5 \(the sprite must fit"),
    ({"scale_range": (3.0, 2.0)}, "scale_range must have r_min < r_max"),
    ({"scale_range": (1.0, 9.0)}, r"scale_range\[1\] must be < 7.5"),
    ({"scale_range": (1.0,)}, "scale_range must be a pair"),
    ({"scale_range": (1.0, 2.0), "radius": 1.0}, "radius must be None when scale_range is given"),
    ({"softness": 0.0}, "softness must be > 0"),
    ({"size": 1}, "size must be >= 2"),
])
def test_sprites_validate(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        Sprites(**kwargs)
    assert "\n" not in str(e.value)


# --- Digits --------------------------------------------------------------------------------

def test_digits_rows_labels_and_disjoint_splits():
    m = Digits()
    assert m.n_points == 1797 and m.image_shape == (1, 8, 8) and m.dim == 64 and not m.has_geometry
    assert m.points.min() == 0 and m.points.max() == 1
    assert m.labels.dtype == torch.long and sorted(m.labels.unique().tolist()) == list(range(10))
    x = m.sample(1797, gen(7))
    assert x.shape == (1797, 64) and torch.equal(x, m.sample(1797, gen(7)))
    assert len(torch.unique(x, dim=0)) == 1797  # all distinct rows
    train, val, test = x.split([1000, 400, 397])
    assert len(torch.unique(torch.cat([train, val, test]), dim=0)) == 1797  # disjoint splits
    # replaying the seed gives the rows drawn, and so their labels
    idx = m.draw_indices(1797, gen(7))
    assert torch.equal(m.points[idx], x)
    assert torch.equal(m.labels_of(train), m.labels[idx[:1000]])
    noisy = Digits(noise_std=0.05).sample(100, gen(7))
    assert (noisy != x[:100]).any() and torch.equal(Digits(noise_std=0.05).labels_of(noisy), m.labels[idx[:100]])
    with pytest.raises(NotImplementedError, match="no known manifold"):
        m.distance(x)
    with pytest.raises(ValueError, match="holds 1797 images; the splits need 1798"):
        m.sample(1798, gen(0))


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ValueError, match=r"Digits needs scikit-learn: pip install 'lightning_vae\[images\]'"):
        Digits()


# --- ImageFiles ----------------------------------------------------------------------------

def _png(path, array, mode):
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path)


def test_image_files_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(12, 5, 7), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    m = ImageFiles(str(tmp_path / "a.npy"))
    assert m.image_shape == (1, 5, 7) and m.n_points == 12 and not m.has_geometry
    assert torch.allclose(m.images(m.points)[:, 0], torch.from_numpy(a).float() / 255)
    x = m.sample(12, gen(0))
    assert len(torch.unique(x, dim=0)) == 12 and torch.equal(m.points[m.draw_indices(12, gen(0))], x)

    b = torch.rand(6, 3, 4, 5, dtype=torch.float64) * 2 - 0.5  # floats kept as they are
    torch.save(b, tmp_path / "b.pt")
    m = ImageFiles(str(tmp_path / "b.pt"))
    assert m.image_shape == (3, 4, 5) and torch.equal(m.images(m.points), b.float())

    folder = tmp_path / "pngs"
    folder.mkdir()
    rgb = rng.integers(0, 256, size=(3, 6, 4, 3), dtype=np.uint8)  # H 6, W 4
    for i in (2, 0, 1):
        _png(folder / f"img{i}.png", rgb[i], "RGB")
    rgba = np.concatenate([rgb[0], np.full((6, 4, 1), 7, np.uint8)], axis=2)
    _png(folder / "img3.png", rgba, "RGBA")  # alpha dropped
    (folder / "notes.txt").write_text("not an image")
    m = ImageFiles(str(folder))
    assert m.image_shape == (3, 6, 4) and m.n_points == 4
    expect = torch.from_numpy(np.concatenate([rgb, rgb[:1]])).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(m.images(m.points), expect)  # sorted by file name

    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        _png(gray / f"{i}.png", rng.integers(0, 256, size=(8, 8), dtype=np.uint8), "L")
    assert ImageFiles(str(gray)).image_shape == (1, 8, 8)


def _bad_inputs(tmp_path):
    """(path, what the message must say) for each bad input."""
    rng = np.random.default_rng(1)
    cases = []
    nan = np.zeros((4, 5, 5), np.float32)
    nan[2, 3, 1] = np.nan
    nan[3, 0, 0] = np.inf
    np.save(tmp_path / "nan.npy", nan)
    cases.append((tmp_path / "nan.npy", ["2 non-finite values", "image 2, channel 0, row 3, column 1",
                                         "expected finite"]))
    np.save(tmp_path / "ndim.npy", np.zeros((4, 5), np.float32))
    cases.append((tmp_path / "ndim.npy", ["(N, H, W) or (N, C, H, W)", "(4, 5)"]))
    torch.save(torch.zeros(4, 2, 5, 5), tmp_path / "two.pt")
    cases.append((tmp_path / "two.pt", ["1 or 3 channels", "got 2 channels"]))
    np.save(tmp_path / "one.npy", np.zeros((1, 5, 5), np.uint8))
    cases.append((tmp_path / "one.npy", ["holds 1 image", "expected at least 2 images"]))
    np.save(tmp_path / "int.npy", np.zeros((4, 5, 5), np.int64))
    cases.append((tmp_path / "int.npy", ["uint8 (0-255) or float", "int64"]))
    (tmp_path / "x.csv").write_text("1,2\n")
    cases.append((tmp_path / "x.csv", ["unsupported file type '.csv'", "expected a .npy or .pt file"]))
    cases.append((tmp_path / "missing.npy", ["not found", "expected a .npy or .pt file"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"")
    cases.append((empty, ["no .png files", "expected a folder of .png images"]))
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    _png(sizes / "a.png", rng.integers(0, 256, (5, 5), dtype=np.uint8), "L")
    _png(sizes / "b.png", rng.integers(0, 256, (6, 5), dtype=np.uint8), "L")
    cases.append((sizes, ["a.png is 5x5", "b.png is 5x6", "expected all the same size"]))
    modes = tmp_path / "modes"
    modes.mkdir()
    _png(modes / "a.png", rng.integers(0, 256, (5, 5), dtype=np.uint8), "L")
    _png(modes / "b.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), "RGB")
    cases.append((modes, ["a.png is L", "b.png is RGB", "expected all grayscale (L) or all RGB/RGBA"]))
    broken = tmp_path / "broken"
    broken.mkdir()
    _png(broken / "a.png", rng.integers(0, 256, (5, 5), dtype=np.uint8), "L")
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases.append((broken, ["b.png could not be decoded", "expected a valid .png image"]))
    return cases


def test_image_files_bad_inputs_raise_one_line_errors(tmp_path):
    for path, parts in _bad_inputs(tmp_path):
        with pytest.raises(ValueError) as e:
            ImageFiles(str(path))
        msg = str(e.value)
        assert "\n" not in msg, msg
        assert path.name in msg, msg
        for part in parts:
            assert part in msg, (part, msg)


# --- the datamodule ------------------------------------------------------------------------

def test_datamodule_serves_flat_images():
    dm = ManifoldDataModule(manifold=FadingSquare(), n_train=64, n_val=16, n_test=16, batch_size=16)
    dm.check_size()
    assert dm.data_dim == 1024 and dm.image_shape == [1, 32, 32]
    assert dm.train_x.shape == (64, 1024) and dm.train_x.dtype == torch.float32
    assert dm.images(dm.val_x).shape == (16, 1, 32, 32)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (1, 16, 1024)
    assert float(FadingSquare().distance(dm.test_x).max()) < 1e-6  # clean images, on the manifold
    digits = ManifoldDataModule(manifold=Digits(), n_train=1000, n_val=400, n_test=397, batch_size=100)
    digits.check_size()
    assert digits.image_shape == [1, 8, 8]
    with pytest.raises(ValueError, match="must be <= 1797"):
        ManifoldDataModule(manifold=Digits(), n_train=1000, n_val=400, n_test=398, batch_size=100).check_size()


@pytest.mark.parametrize("manifold", [FadingSquare(size=16, square=4), Sprites(size=12)])
def test_project_is_invert_and_distance_from_one_inversion(manifold):
    g = torch.Generator().manual_seed(3)
    x = manifold.sample(20, g) + 0.05 * torch.randn(20, manifold.dim, generator=g)
    theta, dist = manifold.project(x)
    assert torch.allclose(theta, manifold.invert(x), atol=1e-9)
    assert torch.allclose(dist, manifold.distance(x).double(), rtol=1e-6)
    # The distance is the one to the generated image at those parameters.
    assert torch.allclose(dist, (x.double() - manifold.generate(theta).double()).norm(dim=1), rtol=1e-6)
