"""An explicit orthonormal embedding of a manifold in R^D, instead of the seeded random rotation."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stderr

import numpy as np
import pytest
import torch
import yaml

from conftest import CONFIGS, gen, run_dirs
from lightning_vae.data import Circle, Manifold, Sphere, TwoMoons
from lightning_vae.data.manifolds import EMBEDDING_TOL, haar_orthogonal


pytestmark = pytest.mark.usefixtures("one_thread")


def orthonormal(d: int, n: int, seed: int) -> torch.Tensor:
    """A random (d, n) float64 matrix with orthonormal columns (QR of a Gaussian one)."""
    return torch.linalg.qr(torch.randn(d, n, generator=gen(seed), dtype=torch.float64)).Q


def normal_offsets(e: torch.Tensor, n_points: int, norm: float, seed: int) -> torch.Tensor:
    """``(n_points, D)`` vectors of the given norm, orthogonal to the columns of ``e``."""
    w = torch.randn(n_points, e.shape[0], generator=gen(seed), dtype=torch.float64)
    w = w - (w @ e) @ e.T
    return norm * w / w.norm(dim=1, keepdim=True)


# --- the geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,d", [(Circle, 8), (Sphere, 6)], ids=["Circle-R8", "Sphere-R6"])
def test_samples_are_p_times_e_transposed_and_distances_exact(cls, d):
    n = cls().natural_dim  # Circle: 2, Sphere: 3
    e = orthonormal(d, n, seed=11)
    m = cls(embedding=e)
    assert (m.dim, m.ambient_dim, m.natural_dim) == (d, d, n)
    assert m.embedding.dtype == torch.float64 and torch.equal(m.embedding, e)
    torch.testing.assert_close(m.rotation.T @ m.rotation, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    x = m.sample(1000, gen(3))
    assert x.shape == (1000, d) and x.dtype == torch.float32
    p = cls().sample(1000, gen(3)).double()  # the same draws in natural coordinates
    torch.testing.assert_close(x.double(), p @ e.T, atol=1e-6, rtol=0)
    assert float(m.distance(x).max()) < 1e-6
    off = x.double() + normal_offsets(e, 1000, 0.3, seed=5)
    torch.testing.assert_close(m.distance(off), torch.full((1000,), 0.3, dtype=torch.float64), atol=1e-6, rtol=0)
    # A point pushed along the manifold's own span is off it by the natural distance.
    radial = 1.5 * p  # radius 1.5 instead of 1
    torch.testing.assert_close(m.distance(radial @ e.T), torch.full((1000,), 0.5, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_components_and_centres_follow_the_embedding():
    e = orthonormal(4, 2, seed=2)
    m = TwoMoons(embedding=e)
    centres = m.centres.double()
    torch.testing.assert_close(centres, TwoMoons().centres.double() @ e.T, atol=1e-6, rtol=0)
    assert m.component(centres).tolist() == [0, 1]
    assert float(m.distance(centres).max()) < 1e-6
    x = m.sample(500, gen(0))
    torch.testing.assert_close(m.component(x), TwoMoons().component(TwoMoons().sample(500, gen(0))))


def test_the_seeded_rotations_columns_reproduce_the_seeded_manifold():
    seeded = Circle(ambient_dim=5, rotation_seed=7, noise_std=0.05)
    given = Circle(embedding=seeded.embedding, noise_std=0.05)
    assert given.rotation_seed == 0 and given.dim == 5
    assert torch.equal(given.embedding, seeded.embedding)
    x0, x1 = seeded.sample(2000, gen(4)), given.sample(2000, gen(4))
    torch.testing.assert_close(x1, x0, atol=1e-6, rtol=0)
    # The completions of the two rotations differ; distances only need their span.
    points = torch.randn(300, 5, generator=gen(9), dtype=torch.float64)
    torch.testing.assert_close(given.distance(points), seeded.distance(points), atol=1e-12, rtol=0)
    torch.testing.assert_close(given.distance(x0), seeded.distance(x0), atol=1e-6, rtol=0)


def test_a_square_orthogonal_matrix_is_the_rotation_and_its_first_columns_the_embedding():
    q = haar_orthogonal(6, 3)
    m = Sphere(embedding=q)
    assert m.dim == 6 and torch.equal(m.rotation, q) and torch.equal(m.embedding, q[:, :3])
    # The seeded manifold's own rotation, given explicitly: the same points, bit for bit.
    assert torch.equal(m.sample(400, gen(1)), Sphere(ambient_dim=6, rotation_seed=3).sample(400, gen(1)))
    # Any other orthogonal matrix: its first three columns are used.
    perm = torch.eye(6, dtype=torch.float64)[[4, 0, 5, 1, 3, 2]]
    m = Sphere(embedding=perm)
    p = Sphere().sample(400, gen(1)).double()
    torch.testing.assert_close(m.sample(400, gen(1)).double(), p @ perm[:, :3].T, atol=0, rtol=0)
    assert float(m.distance(m.sample(400, gen(2))).max()) < 1e-6


def test_rounding_within_the_tolerance_is_accepted():
    e = orthonormal(5, 2, seed=1)
    rounded = np.round(e.numpy(), 8)  # |E^T E - I| ~ 1e-8
    m = Circle(embedding=rounded)
    assert torch.equal(m.embedding, torch.from_numpy(rounded))
    assert EMBEDDING_TOL == 1e-6


# --- where the matrix comes from ----------------------------------------------------------------


def test_npy_pt_nested_lists_and_arrays_load(tmp_path):
    e = orthonormal(5, 2, seed=8)
    np.save(tmp_path / "e.npy", e.numpy())
    torch.save(e, tmp_path / "e.pt")
    sources = {"npy": str(tmp_path / "e.npy"), "pt": str(tmp_path / "e.pt"), "path": tmp_path / "e.npy",
               "lists": e.tolist(), "array": e.numpy(), "tensor": e, "float32": e.float()}
    for name, source in sources.items():
        m = Circle(embedding=source, ambient_dim=5)
        tol = 1e-7 if name == "float32" else 0.0
        torch.testing.assert_close(m.embedding, e, atol=tol, rtol=0, msg=name)
        assert m.embedding.dtype == torch.float64, name


def test_yaml_nested_lists_load_through_jsonargparse(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Manifold, "manifold")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    np.save(tmp_path / "e.npy", orthonormal(4, 2, seed=0).numpy())
    text = """
manifold:
  class_path: lightning_vae.data.Circle
  init_args:
    radius: 2.0
    embedding:
      - [0.6, 0]
      - [0.8, 0]
      - [0, 1]
"""
    m = instantiate(parser.parse_string(text)).manifold
    assert type(m) is Circle and m.dim == 3 and m.radius == 2.0
    assert torch.equal(m.embedding, torch.tensor([[0.6, 0], [0.8, 0], [0, 1]], dtype=torch.float64))
    assert float(m.distance(m.sample(100, gen(0))).max()) < 1e-6
    path_text = text.split("    embedding:")[0] + f"    embedding: {tmp_path / 'e.npy'}\n"
    m = instantiate(parser.parse_string(path_text)).manifold
    assert m.dim == 4
    # The option is documented for the catalog, not for a class that does not take it.
    from lightning_vae.data import PointCloud

    assert "embedding:" in Circle.__doc__ and "1e-06" in Circle.__doc__
    assert "embedding:" not in PointCloud.__doc__ and "ambient_dim:" in PointCloud.__doc__


# --- bad input ----------------------------------------------------------------------------------


def _bad_files(tmp_path) -> None:
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY not really")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"e": torch.eye(3, 2)}, tmp_path / "dict.pt")
    np.save(tmp_path / "cube.npy", np.zeros((3, 2, 2)))
    (tmp_path / "e.txt").write_text("1 0\n0 1\n0 0\n")


E5 = orthonormal(5, 2, seed=3)
NAN = E5.clone()
NAN[2, 1] = math.nan
BAD = [
    ("one-dimensional", Circle, dict(embedding=E5[:, 0]),
     ["embedding must have shape (D, 2) or (D, D) with D >= 2 (Circle's natural dimension), got (5,)"]),
    ("fewer-rows-than-n", Sphere, dict(embedding=torch.eye(2, dtype=torch.float64)),
     ["embedding must have shape (D, 3) or (D, D) with D >= 3 (Sphere's natural dimension), got (2, 2)"]),
    ("wrong-column-count", Circle, dict(embedding=orthonormal(5, 3, 0)), ["shape (D, 2) or (D, D)", "got (5, 3)"]),
    ("not-orthonormal", Circle, dict(embedding=1.01 * E5),
     ["embedding columns are not orthonormal: max |E^T E - I| = 2.0e-02, expected <= 1e-06"]),
    ("rounded-to-3-digits", Circle, dict(embedding=np.round(E5.numpy(), 3).tolist()),
     ["not orthonormal: max |E^T E - I| = ", "e-0", "expected <= 1e-06"]),
    ("nan", Circle, dict(embedding=NAN), ["embedding must hold finite numbers, got 1 NaN or inf entries"]),
    ("ragged-rows", Circle, dict(embedding=[[1.0, 0.0], [0.0, 1.0, 0.0]]),
     ["embedding must be a (D, 2) matrix of real numbers with rows of equal length"]),
    ("words", Circle, dict(embedding=[["a", "b"]]), ["embedding must be a (D, 2) matrix of real numbers"]),
    ("not-a-matrix", Circle, dict(embedding=3),
     ["embedding must be a (D, 2) matrix", "or the path of a .npy or .pt file", "got int"]),
    ("missing-file", Circle, dict(embedding="nowhere/x.npy"),
     ["embedding: no such file 'nowhere/x.npy'; expected a .npy or .pt file holding a (D, 2) matrix"]),
    ("bad-extension", Circle, dict(embedding="{tmp}/e.txt"), ["the path of a .npy or .pt file", "e.txt'"]),
    ("unreadable-npy", Circle, dict(embedding="{tmp}/garbage.npy"),
     ["embedding: ", "garbage.npy could not be read as .npy", "expected np.save of a (D, 2) float array"]),
    ("unreadable-pt", Circle, dict(embedding="{tmp}/garbage.pt"),
     ["embedding: ", "garbage.pt could not be read by torch.load", "expected a .npy or .pt file"]),
    ("pt-not-a-tensor", Circle, dict(embedding="{tmp}/dict.pt"), ["dict.pt must hold one tensor", "got dict"]),
    ("npy-three-dimensional", Circle, dict(embedding="{tmp}/cube.npy"), ["must have shape (D, 2)", "got (3, 2, 2)"]),
    ("ambient-dim-mismatch", Circle, dict(embedding=E5, ambient_dim=6),
     ["ambient_dim must equal the number of rows of embedding (5) or be left out, got 6"]),
    ("ambient-dim-below-n", Circle, dict(embedding=E5, ambient_dim=1), ["ambient_dim must be >= 2"]),
    ("rotation-seed-too", Circle, dict(embedding=E5, rotation_seed=4),
     ["rotation_seed must be 0 when embedding is given", "got 4", "drop one of them"]),
]


@pytest.mark.parametrize("name,cls,kwargs,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_embeddings_are_one_line_value_errors(tmp_path, name, cls, kwargs, expected):
    _bad_files(tmp_path)
    kwargs = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    assert not message.startswith("data."), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


# --- through the CLI ----------------------------------------------------------------------------


SMALL = ["--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--data.n_train=512", "--data.n_val=128", "--data.n_test=128", "--data.batch_size=128",
         "--sample_quality.n_samples=128", "--sample_quality.every_n_epochs=1", "--sample_figure.n_points=64"]


def test_a_config_with_an_embedding_file_trains(tmp_path):
    from lightning_vae.cli import build_cli
    from lightning_vae.runs import read_scalars

    e = orthonormal(5, 2, seed=21)
    np.save(tmp_path / "e.npy", e.numpy())
    cfg = yaml.safe_load((CONFIGS / "circle_spread.yaml").read_text())
    init = cfg["data"]["manifold"]["init_args"]
    del init["ambient_dim"]
    init["embedding"] = str(tmp_path / "e.npy")
    cfg["trainer"]["max_epochs"] = 1
    cfg["data"]["n_train"] = 512
    path = tmp_path / "circle_embedded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = build_cli(["fit", "--config", str(path), *SMALL, f"--trainer.logger.init_args.save_dir={tmp_path}",
                     f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.state.finished
    assert cli.datamodule.data_dim == 5 and cli.model.hparams.data_dim == 5
    assert torch.equal(cli.datamodule.manifold.embedding, e)
    (run,) = run_dirs(tmp_path, "circle_spread")
    s = read_scalars(run)
    assert math.isfinite(s["val/loss"][-1][1]) and math.isfinite(s["quality/dist_mean"][-1][1])
    assert "quality/w1_d4" in s  # five axes
    assert "e.npy" in (run / "config.yaml").read_text()


def test_a_bad_embedding_through_the_cli_is_one_line(tmp_path, capsys):
    from lightning_vae.cli import main

    np.save(tmp_path / "scaled.npy", 1.01 * orthonormal(3, 2, seed=0).numpy())
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *SMALL,
              "--data.manifold=lightning_vae.data.Circle", f"--data.manifold.embedding={tmp_path / 'scaled.npy'}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"])
    assert exit_.value.code == 2
    text = err.getvalue() + capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, text[-1500:]
    assert ("data.manifold.init_args.embedding columns are not orthonormal: max |E^T E - I| = 2.0e-02, "
            "expected <= 1e-06") in errors[0], errors[0]
    assert "Traceback" not in text
    assert not any(tmp_path.rglob("*.ckpt"))
