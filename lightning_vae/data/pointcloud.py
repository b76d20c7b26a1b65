"""A user's own points as a data distribution (torch, with numpy for ``.npy`` and ``.csv``).

The support of such data is unknown, so there is no distance to it and no components:
``has_geometry`` is False and the geometry-based metrics are skipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from lightning_vae.data.manifolds import Manifold

SUFFIXES = (".npy", ".pt", ".csv")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _read_npy(path: Path):
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} could not be read as .npy: {_first_line(e)}") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive renamed to .npy
        raise ValueError(f"{path} must hold one array, got {type(arr).__name__}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{path} must hold real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def _read_pt(path: Path) -> Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, runtime and zip errors alike
        raise ValueError(f"{path} could not be read by torch.load: {_first_line(e)}") from e
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path} must hold a tensor, got {type(obj).__name__}")
    if obj.is_complex():
        raise ValueError(f"{path} must hold real numbers, got dtype {obj.dtype}")
    return obj.detach().to(torch.float32)


def _read_csv(path: Path) -> Tensor:
    import numpy as np

    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    try:  # a first line that is not all numbers is a header
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    try:
        with warnings.catch_warnings():  # an empty file: reported below as holding no points
            warnings.simplefilter("ignore", UserWarning)
            arr = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64,
                             encoding="utf-8-sig")
    except ValueError as e:
        raise ValueError(f"{path} is not a numeric CSV: {_first_line(e)}") from e
    with np.errstate(over="ignore"):
        return torch.from_numpy(arr.astype(np.float32))


def load_points(path: str | Path) -> Tensor:
    """Points ``(P, C)`` float32 from ``.npy``, ``.pt`` (a tensor) or ``.csv``, validated.

    The CSV is numeric and comma separated, with an optional one-line header.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {p.suffix!r}, expected one of {', '.join(SUFFIXES)}")
    x = {".npy": _read_npy, ".pt": _read_pt, ".csv": _read_csv}[suffix](p)
    if x.ndim != 2:
        raise ValueError(
            f"{path} must hold a 2-D array (points x coordinates), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{path} holds no points, got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"expected finite numbers, but {path} holds {int(bad.sum())} non-finite values "
            f"(NaN, inf, or beyond float32); "
            f"the first is in row {row} (counting data rows from 0)")
    return x.contiguous()


class PointCloud(Manifold):
    """A user's own points, drawn without replacement.

    ``sample(n)`` returns n distinct rows of the file (distinct indices) in an order drawn
    from the generator, so the datamodule's train/val/test splits never share a row. The
    support is unknown: ``distance`` and ``component`` raise NotImplementedError.

    Args:
        path: a ``.npy`` file, a ``.pt`` file holding one tensor, or a numeric ``.csv``
            (comma separated, optional one-line header); rows are points, columns
            coordinates.
    """

    has_geometry = False
    intrinsic_dim = None
    n_components = 0

    def __init__(self, path: str, ambient_dim: int | None = None, rotation_seed: int = 0,
                 noise_std: float = 0.0) -> None:
        self.path = str(path)
        self.points = load_points(self.path)  # (P, C)
        super().__init__(self.points.shape[1], ambient_dim, rotation_seed, noise_std)

    def __repr__(self) -> str:
        return f"PointCloud({self.path!r})"

    @property
    def n_points(self) -> int:
        """How many points the file holds: the most ``sample`` can draw."""
        return len(self.points)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        if n > len(self.points):
            raise ValueError(f"{self.path} holds {len(self.points)} points; "
                             f"the splits need {n} (n_train + n_val + n_test)")
        return self.points[torch.randperm(len(self.points), generator=generator)[:n]]

    def _no_geometry(self) -> NotImplementedError:
        return NotImplementedError(f"{self!r} has no known manifold: geometry-based metrics are skipped")

    def distance(self, x: Tensor) -> Tensor:
        raise self._no_geometry()

    def component(self, x: Tensor) -> Tensor:
        raise self._no_geometry()
