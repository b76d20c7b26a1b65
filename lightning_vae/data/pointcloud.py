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


def _check_fits(path: Path, shape: tuple, what: str = "as float32") -> None:
    """The points of ``shape``, float32, fit in memory (``preflight.memory_problem``),
    checked before they are read: a file (or a .npy header) may claim any size."""
    from lightning_vae.preflight import memory_problem, size_text

    count = 1
    for n in shape:
        count *= int(n)
    needed = 2.0 * 4 * count  # the float32 points and the checks' temporaries
    problem = memory_problem(needed)
    if problem is not None:
        raise ValueError(f"{path} holds {' x '.join(map(str, shape))} values, {size_text(4.0 * count)} {what}; "
                         f"reading it would take about {size_text(needed)}, {problem}; expected a smaller "
                         f"point cloud")


def _read_npy(path: Path):
    import numpy as np

    try:  # memory-mapped: the header's shape is checked before anything is read
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # an object array: refused, never unpickled
        raise ValueError(f"{path} could not be read as .npy: {_first_line(e)}; expected a .npy file of "
                         f"real numbers (np.save of a float or int array)") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive renamed to .npy
        raise ValueError(f"{path} must hold one array, got {type(arr).__name__}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{path} must hold real numbers, got dtype {arr.dtype}")
    _check_fits(path, arr.shape)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        return torch.from_numpy(np.array(arr, dtype=np.float32))


def _torch_load(path: Path, expected: str = "") -> object:
    """What a ``.pt`` file holds (tensors only: ``weights_only``), memory-mapped where it can
    be (a zip-format file, so a shape can be checked before the data are read); a file
    torch cannot read is a one-line ValueError, ending in ``expected`` where given."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an older format: read as it is, below
        obj = None
    try:
        if obj is None:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, runtime and zip errors alike
        raise ValueError(f"{path} could not be read by torch.load: {_first_line(e)}{expected}") from e
    return obj


def _read_pt(path: Path) -> Tensor:
    obj = _torch_load(path)
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path} must hold a tensor, got {type(obj).__name__}")
    if obj.is_complex():
        raise ValueError(f"{path} must hold real numbers, got dtype {obj.dtype}")
    _check_fits(path, tuple(obj.shape))
    return obj.detach().to(torch.float32)


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _read_text(path: Path) -> str:
    """A CSV file's text: UTF-8 (ASCII), or UTF-8/16/32 with a byte-order mark; any other
    bytes (Latin-1, a binary file) are an error naming the file and the first bad byte."""
    from lightning_vae.preflight import memory_problem, size_text

    size = path.stat().st_size
    problem = memory_problem(16.0 * size)  # parsed: float64 values and numpy's row lists
    if problem is not None:
        raise ValueError(f"{path} is {size_text(size)} of text; parsing it would take about "
                         f"{size_text(16.0 * size)}, {problem}; expected a smaller CSV (or a .npy file)")
    raw = path.read_bytes()
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path} is not {encoding.upper().replace('-SIG', '')} text: byte "
                         f"0x{raw[e.start]:02x} at offset {e.start} (line {line}) cannot be decoded; expected "
                         f"a numeric CSV in UTF-8 (or ASCII) text: re-save it as UTF-8") from e
    if "\x00" in text:
        raise ValueError(f"{path} holds a NUL character at offset {text.index(chr(0))} (a binary file?); "
                         f"expected a numeric CSV in UTF-8 text")
    return text


def _read_csv(path: Path) -> Tensor:
    import io

    import numpy as np

    text = _read_text(path)
    first = text.split("\n", 1)[0]
    try:  # a first line that is not all numbers is a header
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    try:
        with warnings.catch_warnings():  # an empty file: reported below as holding no points
            warnings.simplefilter("ignore", UserWarning)
            arr = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path} is not a numeric CSV: {_first_line(e)}") from e
    with np.errstate(over="ignore"):
        return torch.from_numpy(arr.astype(np.float32))


def load_points(path: str | Path) -> Tensor:
    """Points ``(P, C)`` float32 from ``.npy``, ``.pt`` (a tensor) or ``.csv``, validated.

    The CSV is numeric and comma separated, with an optional one-line header.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path} is a directory; expected a point cloud file ({', '.join(SUFFIXES)})")
    if not p.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {p.suffix!r}, expected one of {', '.join(SUFFIXES)}")
    try:
        x = {".npy": _read_npy, ".pt": _read_pt, ".csv": _read_csv}[suffix](p)
    except OSError as e:  # no permission, an I/O error
        raise ValueError(f"{path} could not be read: {e.strerror or e}; expected a readable point cloud "
                         f"file") from e
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
    if len(x) == 1:
        raise ValueError(f"{path} holds a single point; expected many points that vary along at least one axis")
    if bool((x == x[0]).all()):
        first = ", ".join(f"{float(v):g}" for v in x[0, :4]) + (", ..." if x.shape[1] > 4 else "")
        raise ValueError(f"{path}: all {len(x)} points are the same point ({first}): zero spread; expected "
                         f"points that vary along at least one axis")
    return x.contiguous()


class NoGeometry:
    """Mixin of the data sets whose support is unknown (a user's points or images, the
    digits): ``has_geometry`` False, and ``distance``/``component`` raise
    NotImplementedError, so the geometry-based metrics are skipped."""

    has_geometry = False
    intrinsic_dim = None
    n_components = 0

    def _no_geometry(self) -> NotImplementedError:
        return NotImplementedError(f"{self!r} has no known manifold: geometry-based metrics are skipped")

    def distance(self, x: Tensor) -> Tensor:
        raise self._no_geometry()

    def component(self, x: Tensor) -> Tensor:
        raise self._no_geometry()


class PointCloud(NoGeometry, Manifold):
    """A user's own points, drawn without replacement.

    ``sample(n)`` returns n distinct rows of the file (distinct indices) in an order drawn
    from the generator, so the datamodule's train/val/test splits never share a row. The
    support is unknown: ``distance`` and ``component`` raise NotImplementedError.

    Args:
        path: a ``.npy`` file, a ``.pt`` file holding one tensor, or a numeric ``.csv``
            (comma separated, optional one-line header); rows are points, columns
            coordinates.
    """

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
