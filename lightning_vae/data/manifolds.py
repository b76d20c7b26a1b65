"""Pure samplers of manifold data (torch only).

A manifold knows how to draw points from its data distribution with an explicit
``torch.Generator`` and knows its own geometry: the exact distance of any point to the
support, and, where the data have discrete components (modes), which component a point
belongs to. Metrics use the geometry; the datamodule only calls ``sample``.

Each manifold is defined in its natural coordinates, R^n with n small. Any of them can be
embedded in R^D (D >= n): zero-padded to D coordinates and rotated by a fixed Haar-random
orthogonal matrix Q, so that no coordinate axis is exactly zero any more, and isotropic
Gaussian noise can be added after the embedding. The base class does both, once for all
manifolds; Q is orthogonal, so distances stay exact:

    x = [p, 0] Q^T,   u = x Q,   d(x) = sqrt(d_nat(u[:n])^2 + |u[n:]|^2).

Instead of the random Q, an explicit embedding can be given: a (D, n) matrix E with
orthonormal columns, x = p E^T (to ``EMBEDDING_TOL`` in max |E^T E - I|). It is completed to
an orthogonal Q whose first n columns are E exactly (a (D, D) orthogonal matrix is Q
itself), and the formulas above apply unchanged.
"""

from __future__ import annotations

import inspect
import math
import os
from numbers import Integral, Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vae.data.curves import _GRID_PER_TURN, _cos_sin, curve_distance


EMBEDDING_TOL = 1e-6  # the largest max |E^T E - I| accepted of an explicit embedding E
EMBEDDING_SUFFIXES = (".npy", ".pt")

# The ``embedding`` entry alone: left out of the Args of a subclass that does not take it.
_EMBEDDING_ARG = f"""
        embedding: an explicit embedding instead of the random rotation: a (D, n) matrix E
            with orthonormal columns, n the natural dimension (x = p E^T), or a (D, D)
            orthogonal matrix, whose first n columns are used; inline (a list of D rows)
            or the path of a .npy or .pt file holding it. Orthonormal to within
            max |E^T E - I| <= {EMBEDDING_TOL:.0e}: write enough digits. Sets D
            (``ambient_dim`` may be left out); ``rotation_seed`` must then stay 0."""
_EMBEDDING_ARGS = f"""
        ambient_dim: dimension D of the returned points. ``None``: the natural
            coordinates (or, with ``embedding``, its number of rows). An int D >= the
            natural dimension: points zero-padded to D and rotated by a fixed Haar-random
            orthogonal D x D matrix.
        rotation_seed: seed of that rotation (the data seed does not change it).{_EMBEDDING_ARG}
        noise_std: std of isotropic Gaussian noise added in the ambient space after the
            embedding, drawn from the sampling generator (0: data exactly on the manifold).
"""


def _check_int(name: str, value, minimum: int, why: str = "") -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{why}, got {value!r}")
    return int(value)


def _check_real(name: str, value, positive: bool) -> float:
    """A finite real number, > 0 (``positive``) or >= 0; NaN fails the comparison."""
    bound = "> 0" if positive else ">= 0"
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    if not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


SEED_MAX = 2**64 - 1  # the largest torch.Generator seed


def _check_seed(name: str, value) -> int:
    """A seed of a ``torch.Generator``: an integer in 0 .. 2**64 - 1."""
    value = _check_int(name, value, 0)
    if value > SEED_MAX:
        raise ValueError(f"{name} must be <= {SEED_MAX} (2**64 - 1, a torch.Generator seed), got {value}")
    return value


def _check_fits(name: str, needed: float, what: str) -> None:
    """``needed`` bytes (for ``what``) fit in the memory here, or a ValueError naming ``name``."""
    from lightning_vae.preflight import memory_problem, size_text

    problem = memory_problem(needed)
    if problem is not None:
        raise ValueError(f"{name}: {what} would take about {size_text(needed)}, {problem}; expected a smaller "
                         f"{name}")


def haar_orthogonal(d: int, seed: int) -> Tensor:
    """A Haar-distributed orthogonal ``(d, d)`` float64 matrix, fixed by ``seed``.

    QR of a standard Gaussian matrix, with the signs of R's diagonal moved into Q: without
    that fix Q is not Haar (Mezzadri 2007, "How to generate random matrices from the
    classical compact groups").
    """
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(r))
    return q * torch.where(sign == 0, 1.0, sign)  # column j times sign(R_jj)


def _embedding_shape(shape: tuple, n: int, owner: str) -> tuple[int, int]:
    """``(D, n)`` or ``(D, D)`` with D >= n, or a ValueError naming the expected shape."""
    if len(shape) != 2 or shape[0] < n or shape[1] not in (n, shape[0]):
        raise ValueError(f"embedding must have shape (D, {n}) or (D, D) with D >= {n} ({owner}'s natural "
                         f"dimension), got {tuple(int(v) for v in shape)}")
    d = int(shape[0])
    # The completed rotation: a D x D float64 matrix, its QR's Q and R, the result.
    _check_fits("embedding", 32.0 * d**2, f"the rotation of R^{d} it completes to ({d} x {d} float64 matrices)")
    return d, int(shape[1])


def _read_embedding(path: Path, n: int, owner: str) -> Tensor:
    """The matrix in a ``.npy`` or ``.pt`` file, its shape checked before its data are read."""
    expected = f"expected a .npy or .pt file holding a (D, {n}) matrix"
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ValueError(f"embedding must be a (D, {n}) matrix or the path of a .npy or .pt file holding one, "
                         f"got {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"embedding: no such file {str(path)!r}; {expected}")
    from lightning_vae.data.pointcloud import _first_line, _torch_load  # pointcloud imports this module

    if path.suffix.lower() == ".npy":
        import numpy as np

        try:  # memory-mapped; an object array is refused, never unpickled
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"embedding: {path} could not be read as .npy: {_first_line(e)}; "
                             f"expected np.save of a (D, {n}) float array") from e
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise ValueError(f"embedding: {path} must hold one array of real numbers, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)}; {expected}")
        _embedding_shape(arr.shape, n, owner)
        return torch.from_numpy(np.array(arr, dtype=np.float64))
    try:
        obj = _torch_load(path, f"; {expected}")
    except ValueError as e:
        raise ValueError(f"embedding: {e}") from e
    if not isinstance(obj, Tensor) or obj.is_complex():
        got = obj.dtype if isinstance(obj, Tensor) else type(obj).__name__
        raise ValueError(f"embedding: {path} must hold one tensor of real numbers, got {got}; {expected}")
    _embedding_shape(tuple(obj.shape), n, owner)
    return obj.to(torch.float64)


def embedding_rotation(embedding, n: int, owner: str = "the manifold") -> Tensor:
    """An explicit embedding, checked, as the orthogonal ``(D, D)`` float64 rotation Q whose
    first ``n`` columns it is.

    Args:
        embedding: a ``(D, n)`` matrix with orthonormal columns or a ``(D, D)`` orthogonal
            one (nested lists, a tensor, an array), or the path of a ``.npy``/``.pt`` file.
        n: the natural dimension.
        owner: the manifold's name, for the messages.

    A (D, D) matrix is returned as it is; a (D, n) one is completed by the complete QR of
    E, whose last D - n columns span the orthogonal complement of E's columns. Every bad
    input is a one-line ValueError naming what was expected.
    """
    if isinstance(embedding, (str, os.PathLike)):
        e = _read_embedding(Path(embedding), n, owner)
    elif isinstance(embedding, Tensor) or hasattr(embedding, "__array__") or isinstance(embedding, (list, tuple)):
        try:
            e = torch.as_tensor(embedding) if not isinstance(embedding, (list, tuple)) else \
                torch.tensor(embedding, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:  # ragged rows, words, objects
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"embedding must be a (D, {n}) matrix of real numbers with rows of equal length: "
                             f"{reason}") from err
        if e.is_complex():
            raise ValueError(f"embedding must be a (D, {n}) matrix of real numbers, got dtype {e.dtype}")
        e = e.detach().to("cpu", torch.float64)
    else:
        raise ValueError(f"embedding must be a (D, {n}) matrix (a list of rows, a tensor, an array) or the path "
                         f"of a .npy or .pt file holding one, got {type(embedding).__name__}")
    d, cols = _embedding_shape(tuple(e.shape), n, owner)
    bad = int((~torch.isfinite(e)).sum())
    if bad:
        raise ValueError(f"embedding must hold finite numbers, got {bad} NaN or inf entries")
    # A square matrix is the whole rotation: all its columns must be orthonormal.
    off = float((e.T @ e - torch.eye(cols, dtype=torch.float64)).abs().max())
    if not off <= EMBEDDING_TOL:
        raise ValueError(f"embedding columns are not orthonormal: max |E^T E - I| = {off:.1e}, "
                         f"expected <= {EMBEDDING_TOL:.0e}")
    if cols == d:  # a copy: the caller's tensor or array may change later
        return e.clone(memory_format=torch.contiguous_format)
    complement = torch.linalg.qr(e, mode="complete").Q[:, cols:]  # (D, D - n), orthogonal to E's columns
    return torch.cat([e, complement], 1)


class Manifold:
    """A data distribution supported on a known manifold, optionally embedded in R^D.

    Subclasses set ``intrinsic_dim`` and ``n_components`` (0 when the data have no
    discrete modes), call ``super().__init__`` with their natural dimension n, and
    implement in natural coordinates ``_sample`` ``(n_points, n)``, ``_distance`` and,
    when ``n_components > 0``, ``_component`` and ``_centres``. The public methods apply
    the embedding and the noise (module docstring). ``dim`` is the dimension of the
    returned points: ``ambient_dim``, or n without embedding. ``rotation`` is the orthogonal
    ``(D, D)`` float64 Q (None without embedding); ``embedding`` its first n columns.

    Args:
        natural_dim: dimension n of the natural coordinates (set by the subclass).
        ambient_dim: ``None`` or an int D >= n (see the subclasses).
        rotation_seed: seed of the rotation.
        noise_std: std of the ambient Gaussian noise.
        embedding: ``None`` (the random rotation) or an explicit embedding, keyword only
            (see the subclasses and ``embedding_rotation``).
    """

    dim: int
    natural_dim: int
    intrinsic_dim: int | None
    n_components: int = 0
    has_geometry: bool = True
    n_points: int | None = None  # how many distinct points ``sample`` can draw (None: no limit)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # The shared arguments are documented once and appended to every subclass's Args:
        # section, so that LightningCLI's --help lists them for each manifold.
        if cls.__doc__ and "Args:" in cls.__doc__ and "ambient_dim:" not in cls.__doc__:
            takes_embedding = "embedding" in inspect.signature(cls.__init__).parameters
            block = _EMBEDDING_ARGS if takes_embedding else _EMBEDDING_ARGS.replace(_EMBEDDING_ARG, "")
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + block

    def __init__(self, natural_dim: int, ambient_dim: int | None = None, rotation_seed: int = 0,
                 noise_std: float = 0.0, *, embedding: list[list[float]] | str | None = None) -> None:
        # ``embedding`` is keyword-only: subclasses pass the other three positionally.
        name = type(self).__name__
        self.natural_dim = natural_dim
        if ambient_dim is not None:
            ambient_dim = _check_int("ambient_dim", ambient_dim, natural_dim,
                                     f" (the natural dimension of {name})")
            if embedding is None:
                # The rotation: a D x D float64 Gaussian matrix, its QR's Q and R, the result.
                _check_fits("ambient_dim", 32.0 * ambient_dim**2, f"the random rotation of R^{ambient_dim} "
                                                                  f"({ambient_dim} x {ambient_dim} float64 matrices)")
        self.rotation_seed = _check_seed("rotation_seed", rotation_seed)
        self.noise_std = _check_real("noise_std", noise_std, positive=False)
        rotation = None
        if embedding is not None:
            if self.rotation_seed != 0:  # it would be ignored
                raise ValueError(f"rotation_seed must be 0 when embedding is given (the embedding replaces the "
                                 f"random rotation), got {self.rotation_seed}; drop one of them")
            rotation = embedding_rotation(embedding, natural_dim, name)
            if ambient_dim is not None and ambient_dim != len(rotation):
                raise ValueError(f"ambient_dim must equal the number of rows of embedding ({len(rotation)}) "
                                 f"or be left out, got {ambient_dim}")
            ambient_dim = len(rotation)
        elif ambient_dim is not None:
            rotation = haar_orthogonal(ambient_dim, self.rotation_seed)
        self.ambient_dim = ambient_dim
        self.dim = natural_dim if ambient_dim is None else ambient_dim
        # Q (D, D): ambient x = [p, 0] Q^T; None keeps the natural coordinates.
        self.rotation = rotation

    @property
    def embedding(self) -> Tensor | None:
        """The embedding in use, ``(D, n)`` float64 with orthonormal columns: x = p E^T (the
        given one, or the random rotation's first n columns); None in natural coordinates."""
        return None if self.rotation is None else self.rotation[:, : self.natural_dim].clone()

    # --- natural coordinates, implemented by subclasses ------------------------------------

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _distance(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _component(self, u: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no discrete components")

    def _centres(self) -> Tensor:
        raise NotImplementedError

    def _tangent(self, u: Tensor) -> Tensor:
        """Orthonormal tangent bases ``(N, n, intrinsic_dim)`` at the nearest support points
        of ``u`` ``(N, n)`` (natural coordinates); where a manifold has it exactly."""
        raise NotImplementedError(f"{type(self).__name__} has no exact tangent space here")

    # --- public API in ambient coordinates -------------------------------------------------

    def embed(self, p: Tensor) -> Tensor:
        """Natural coordinates ``(N, natural_dim)`` to ambient points ``(N, dim)`` (float64)."""
        p = p.to(torch.float64)
        if self.rotation is None:
            return p
        return p @ self.rotation[:, : self.natural_dim].to(p.device).T

    def _natural(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Natural coordinates ``(N, n)`` of ``x`` (float64) and the norm of the rest, ``(N,)``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        x = x.to(torch.float64)
        if self.rotation is None:
            return x, None
        u = x @ self.rotation.to(x.device)  # (N, D)
        return u[:, : self.natural_dim], u[:, self.natural_dim :].norm(dim=1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw ``n`` points, ``(n, dim)`` float32."""
        n = _check_int("n", n, 0)
        x = self._sample(n, generator)  # (n, natural_dim)
        if self.rotation is None and self.noise_std == 0:
            return x.to(torch.float32)  # as drawn: natural samples are reproduced bit for bit
        x = self.embed(x)  # (n, D)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x.to(torch.float32)

    def distance(self, x: Tensor) -> Tensor:
        """Exact Euclidean distance of each row of ``x`` ``(N, dim)`` to the clean support, ``(N,)``.

        Computed in float64, returned in the dtype of ``x`` (float32 for integer input).
        """
        u, rest = self._natural(x)
        d = self._distance(u)
        if rest is not None:
            d = torch.hypot(d, rest)
        return d.to(x.dtype if x.is_floating_point() else torch.float32)

    def tangent(self, x: Tensor) -> Tensor:
        """Orthonormal bases of the tangent space of the support at the rows of ``x``
        ``(N, dim)`` (at their nearest support points), ``(N, dim, intrinsic_dim)`` float64.
        NotImplementedError for a manifold without an exact one (``has_tangent``)."""
        u, _ = self._natural(x)
        t = self._tangent(u)  # (N, n, d)
        if self.rotation is None:
            return t
        return self.rotation[:, : self.natural_dim].to(t.device) @ t  # (D, n) @ (N, n, d)

    @property
    def has_tangent(self) -> bool:
        """Whether ``tangent`` is available (the learned spread's alignment needs it)."""
        return type(self)._tangent is not Manifold._tangent

    def component(self, x: Tensor) -> Tensor:
        """Index of the component (mode) nearest to each row of ``x``, ``(N,)`` long."""
        if not self.n_components:
            raise NotImplementedError(f"{type(self).__name__} has no discrete components")
        return self._component(self._natural(x)[0])

    @property
    def centres(self) -> Tensor:
        """The component centres, ``(n_components, dim)`` float32; row k belongs to component k."""
        if not self.n_components:  # AttributeError: getattr(manifold, "centres", None) works
            raise AttributeError(f"{type(self).__name__} has no discrete components")
        return self.embed(self._centres()).to(torch.float32)


class TwoClusters(Manifold):
    """The seed's data: two Gaussian clusters on the first axis of R^dim.

    z ~ Bernoulli(0.5),  a ~ Normal(2z - 1, cluster_std),  x = (a, 0, ..., 0).

    The support is the line through the first axis (a 1-D manifold); in natural
    coordinates every other coordinate is exactly zero, which is what breaks maximum
    likelihood. Components:
    0 for the negative cluster, 1 for the positive one (the sign of the first coordinate).

    Args:
        cluster_std: standard deviation ``s`` of each cluster along the line (the seed's
            0.1; it is a std, not a variance).
        separation: distance of each cluster centre from the origin (centres at -sep, +sep).
        dim: natural dimension (the seed's 2).
    """

    intrinsic_dim = 1
    n_components = 2

    def __init__(self, cluster_std: float = 0.1, separation: float = 1.0, dim: int = 2,
                 ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.cluster_std = _check_real("cluster_std", cluster_std, positive=False)
        self.separation = _check_real("separation", separation, positive=True)
        super().__init__(_check_int("dim", dim, 1), ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def line_entropy(self, n_grid: int = 200_001) -> float:
        """Differential entropy (nats) of the coordinate along the line, by quadrature.

        Cross-entropy >= entropy: no model of that coordinate alone can reach an expected
        negative log-likelihood below this. A loss below it must come from the other axes.
        Of the clean data in natural coordinates: ``noise_std`` is not included.
        """
        if self.cluster_std == 0:
            return -math.inf
        s, m = self.cluster_std, self.separation
        a = torch.linspace(-m - 12 * s, m + 12 * s, n_grid, dtype=torch.float64)
        log_p = torch.logsumexp(torch.stack([
            -0.5 * ((a - c) / s) ** 2 for c in (-m, m)]), 0) - math.log(2 * s * math.sqrt(2 * math.pi))
        return float(-(log_p.exp() * log_p).sum() * (a[1] - a[0]))

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        # The seed's draws, in the seed's order and dtype: published results depend on them.
        z = torch.randint(0, 2, (n,), generator=generator)
        a = (2 * z - 1) * self.separation + self.cluster_std * torch.randn(n, generator=generator)
        x = torch.zeros(n, self.natural_dim)  # (N, n)
        x[:, 0] = a
        return x

    def _distance(self, u: Tensor) -> Tensor:
        return u[:, 1:].norm(dim=1)  # distance to the first axis

    def _component(self, u: Tensor) -> Tensor:
        return (u[:, 0] > 0).long()

    def _tangent(self, u: Tensor) -> Tensor:
        t = torch.zeros(len(u), self.natural_dim, 1, dtype=torch.float64, device=u.device)
        t[:, 0, 0] = 1.0  # the line is the first axis
        return t

    def _centres(self) -> Tensor:
        c = torch.zeros(2, self.natural_dim, dtype=torch.float64)
        c[:, 0] = torch.tensor([-self.separation, self.separation])
        return c


class LineSegment(Manifold):
    """Uniform on the segment [-L/2, L/2] x {0} of R^2 (intrinsic dimension 1).

    Distance: hypot(max(|x_1| - L/2, 0), x_2).

    Args:
        length: length ``L`` of the segment.
    """

    intrinsic_dim = 1

    def __init__(self, length: float = 2.0, ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.length = _check_real("length", length, positive=True)
        super().__init__(2, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        a = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * self.length
        return torch.stack([a, torch.zeros_like(a)], 1)

    def _distance(self, u: Tensor) -> Tensor:
        return torch.hypot((u[:, 0].abs() - self.length / 2).clamp(min=0), u[:, 1])


class Circle(Manifold):
    """Uniform on the circle of radius r in R^2 (uniform angle; intrinsic dimension 1).

    Distance: | |x| - r |.

    Args:
        radius: radius ``r``.
    """

    intrinsic_dim = 1

    def __init__(self, radius: float = 1.0, ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.radius = _check_real("radius", radius, positive=True)
        super().__init__(2, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        t = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return self.radius * torch.stack([t.cos(), t.sin()], 1)

    def _tangent(self, u: Tensor) -> Tensor:
        r = u / u.norm(dim=1, keepdim=True)  # (N, 2)
        return torch.stack([-r[:, 1], r[:, 0]], 1)[:, :, None]  # (N, 2, 1): (-sin, cos)

    def _distance(self, u: Tensor) -> Tensor:
        return (u.norm(dim=1) - self.radius).abs()


class TwoMoons(Manifold):
    """scikit-learn's ``make_moons`` layout without noise, as two curves in R^2.

    Outer moon (component 0): r (cos t, sin t); inner moon (component 1):
    r (1 - cos t, 0.5 - sin t); t in [0, pi]. Each moon with probability 1/2, t uniform
    (uniform in arc length: both are half circles of radius r). Centres: the arc midpoints
    (0, r) and (r, -r/2). Distance to a half circle, exactly: to the full circle when the
    point's angle about the circle's centre lies within the arc, else to the nearer
    endpoint; the distance to the moons is the smaller of the two, the component the
    nearer moon.

    Args:
        radius: radius ``r`` of both half circles.
    """

    intrinsic_dim = 1
    n_components = 2

    def __init__(self, radius: float = 1.0, ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.radius = _check_real("radius", radius, positive=True)
        super().__init__(2, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randint(0, 2, (n, 1), generator=generator)
        t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        outer = torch.stack([t.cos(), t.sin()], 1)
        inner = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
        return self.radius * torch.where(z == 1, inner, outer)

    def _arc_distances(self, u: Tensor) -> Tensor:
        """Distance to the outer and to the inner moon, ``(N, 2)``."""
        r = self.radius
        out = []
        # (centre, side): the outer arc is the upper half of its circle, the inner the lower.
        for (cx, cy), side in (((0.0, 0.0), 1.0), ((r, r / 2), -1.0)):
            px, py = u[:, 0] - cx, u[:, 1] - cy
            to_circle = (torch.hypot(px, py) - r).abs()
            to_ends = torch.minimum(torch.hypot(px - r, py), torch.hypot(px + r, py))
            out.append(torch.where(side * py >= 0, to_circle, to_ends))
        return torch.stack(out, 1)

    def _distance(self, u: Tensor) -> Tensor:
        return self._arc_distances(u).amin(dim=1)

    def _component(self, u: Tensor) -> Tensor:
        return self._arc_distances(u).argmin(dim=1)

    def _centres(self) -> Tensor:
        return self.radius * torch.tensor([[0.0, 1.0], [1.0, -0.5]], dtype=torch.float64)


class _ArchimedeanCurve:
    """The planar spiral c(t) = scale * t (cos t, sin t), t in [t0, t1] (0 < t0 < t1).

    Arc length from 0 (unscaled): s(t) = (t sqrt(1 + t^2) + asinh t) / 2, convex and
    increasing, so Newton's method started at t1 inverts it monotonically.
    """

    def __init__(self, t0: float, t1: float, scale: float) -> None:
        self.t0, self.t1, self.scale = t0, t1, scale
        self.n_grid = math.ceil((t1 - t0) / (2 * math.pi) * _GRID_PER_TURN) + 1

    def __call__(self, t: Tensor) -> Tensor:
        cos, sin = _cos_sin(t)
        return self.scale * torch.stack([t * cos, t * sin], -1)

    @staticmethod
    def _arc_length(t: Tensor) -> Tensor:
        return 0.5 * (t * torch.sqrt(1 + t * t) + torch.asinh(t))

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        """Parameters uniform in arc length, ``(n,)`` float64."""
        lo, hi = (self._arc_length(torch.tensor(v, dtype=torch.float64)) for v in (self.t0, self.t1))
        target = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        t = torch.full_like(target, self.t1)
        for _ in range(100):  # quadratic convergence: ~6 steps in practice
            step = (self._arc_length(t) - target) / torch.sqrt(1 + t * t)
            t = (t - step).clamp(self.t0, self.t1)
            if n == 0 or float(step.abs().max()) < 1e-13 * self.t1:
                break
        return t

    def distance(self, xy: Tensor) -> Tensor:
        return curve_distance(xy, self, self.t0, self.t1, self.n_grid)


class Spiral(Manifold):
    """A planar Archimedean spiral in R^2 (intrinsic dimension 1).

    c(t) = t (cos t, sin t) / t1, t in [pi, t1], t1 = pi + 2 pi turns: it starts half a
    turn away from the origin (radius pi / t1) and ends at radius 1; successive turns are
    2 pi / t1 apart. Sampling is uniform in ARC LENGTH (the uniform measure on the curve),
    by inverting the closed-form arc length with Newton's method. Distance: numerically
    exact (``curve_distance``).

    Args:
        turns: number of turns.
    """

    intrinsic_dim = 1

    def __init__(self, turns: float = 2.0, ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.turns = _check_real("turns", turns, positive=True)
        t1 = math.pi + 2 * math.pi * self.turns
        self.curve = _ArchimedeanCurve(math.pi, t1, 1 / t1)
        super().__init__(2, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.curve(self.curve.sample_t(n, generator))

    def _distance(self, u: Tensor) -> Tensor:
        return self.curve.distance(u)


class SwissRoll(Manifold):
    """The swiss roll: a 2-D surface in R^3, a spiral times an interval.

    x = (s t cos t, h, s t sin t), t in [1.5 pi, 4.5 pi] (scikit-learn's
    ``make_swiss_roll``), s = 1 / (4.5 pi) so that the outer radius is 1, h in
    [0, height]. Sampling is uniform in AREA (t uniform in arc length of the spiral, h
    uniform); ``make_swiss_roll`` instead draws t uniformly, denser near the centre.
    Distance, exact for a product: hypot(distance of (x_1, x_3) to the spiral, numerically
    exact; distance of x_2 to [0, height]).

    Args:
        height: length of the roll along the second axis (``make_swiss_roll``'s 21 at
            the same scale is 1.49).
    """

    intrinsic_dim = 2

    def __init__(self, height: float = 1.5, ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.height = _check_real("height", height, positive=True)
        self.curve = _ArchimedeanCurve(1.5 * math.pi, 4.5 * math.pi, 1 / (4.5 * math.pi))
        super().__init__(3, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        xz = self.curve(self.curve.sample_t(n, generator))  # (n, 2)
        h = self.height * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([xz[:, 0], h, xz[:, 1]], 1)

    def _distance(self, u: Tensor) -> Tensor:
        along = u[:, 1] - u[:, 1].clamp(0, self.height)
        return torch.hypot(self.curve.distance(u[:, [0, 2]]), along)


class Sphere(Manifold):
    """Uniform on the sphere S^(dim-1) of radius r in R^dim (normalised Gaussians).

    Intrinsic dimension dim - 1. Distance: | |x| - r |.

    Args:
        radius: radius ``r``.
        dim: natural dimension (3: the 2-sphere in R^3).
    """

    def __init__(self, radius: float = 1.0, dim: int = 3, ambient_dim: int | None = None,
                 rotation_seed: int = 0, embedding: list[list[float]] | str | None = None,
                 noise_std: float = 0.0) -> None:
        self.radius = _check_real("radius", radius, positive=True)
        dim = _check_int("dim", dim, 2)
        self.intrinsic_dim = dim - 1
        super().__init__(dim, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        g = torch.randn(n, self.natural_dim, generator=generator, dtype=torch.float64)
        return self.radius * g / g.norm(dim=1, keepdim=True)

    def _tangent(self, u: Tensor) -> Tensor:
        r = u / u.norm(dim=1, keepdim=True)  # (N, n)
        # The complement of r: the last n - 1 left singular vectors of the projector I - r r^T.
        eye = torch.eye(self.natural_dim, dtype=u.dtype, device=u.device)
        q = torch.linalg.svd(eye - r[:, :, None] * r[:, None, :]).U  # (N, n, n), descending
        return q[:, :, : self.natural_dim - 1]

    def _distance(self, u: Tensor) -> Tensor:
        return (u.norm(dim=1) - self.radius).abs()


class Torus(Manifold):
    """A ring torus in R^3 (intrinsic dimension 2), uniform in area.

    x = ((R + r cos phi) cos theta, (R + r cos phi) sin theta, r sin phi), theta uniform,
    phi by rejection with acceptance (R + r cos phi) / (R + r): the area element is
    proportional to R + r cos phi. Distance, exact: | hypot(hypot(x_1, x_2) - R, x_3) - r |.

    Args:
        major_radius: radius ``R`` of the centre circle of the tube.
        minor_radius: radius ``r`` of the tube, < R.
    """

    intrinsic_dim = 2

    def __init__(self, major_radius: float = 1.0, minor_radius: float = 0.4,
                 ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.major_radius = _check_real("major_radius", major_radius, positive=True)
        self.minor_radius = _check_real("minor_radius", minor_radius, positive=True)
        if self.minor_radius >= self.major_radius:  # else the surface intersects itself
            raise ValueError(
                f"minor_radius must be < major_radius ({major_radius!r}), got {minor_radius!r}")
        super().__init__(3, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        big, small = self.major_radius, self.minor_radius
        phi = torch.zeros(0, dtype=torch.float64)
        while len(phi) < n:  # acceptance R / (R + r) > 1/2 on average
            m = 2 * (n - len(phi)) + 16
            prop = 2 * math.pi * torch.rand(m, generator=generator, dtype=torch.float64)
            u = torch.rand(m, generator=generator, dtype=torch.float64)
            phi = torch.cat([phi, prop[u * (big + small) < big + small * prop.cos()]])[:n]
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        ring = big + small * phi.cos()
        return torch.stack([ring * theta.cos(), ring * theta.sin(), small * phi.sin()], 1)

    def _distance(self, u: Tensor) -> Tensor:
        to_core = torch.hypot(torch.hypot(u[:, 0], u[:, 1]) - self.major_radius, u[:, 2])
        return (to_core - self.minor_radius).abs()


class Helix(Manifold):
    """A circular helix in R^3 (intrinsic dimension 1).

    c(t) = (r cos t, r sin t, pitch t / (2 pi)), t in [0, 2 pi turns]. The speed is
    constant, so t uniform is uniform in arc length. Distance: numerically exact
    (``curve_distance``).

    Args:
        radius: radius ``r`` of the cylinder the helix winds on.
        pitch: rise per turn along the third axis.
        turns: number of turns.
    """

    intrinsic_dim = 1

    def __init__(self, radius: float = 1.0, pitch: float = 0.5, turns: float = 3.0,
                 ambient_dim: int | None = None, rotation_seed: int = 0,
                 embedding: list[list[float]] | str | None = None, noise_std: float = 0.0) -> None:
        self.radius = _check_real("radius", radius, positive=True)
        self.pitch = _check_real("pitch", pitch, positive=True)
        self.turns = _check_real("turns", turns, positive=True)
        self.t1 = 2 * math.pi * self.turns
        self.n_grid = math.ceil(self.turns * _GRID_PER_TURN) + 1
        super().__init__(3, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def curve(self, t: Tensor) -> Tensor:
        cos, sin = _cos_sin(t)
        return torch.stack([self.radius * cos, self.radius * sin, self.pitch / (2 * math.pi) * t], -1)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.curve(self.t1 * torch.rand(n, generator=generator, dtype=torch.float64))

    def _distance(self, u: Tensor) -> Tensor:
        return curve_distance(u, self.curve, 0.0, self.t1, self.n_grid)


class GaussianBlobs(Manifold):
    """Isotropic Gaussian blobs inside a linear subspace of R^dim.

    The centres are drawn once, uniform in [-spread, spread]^subspace_dim (the
    ``center_box`` of scikit-learn's ``make_blobs``), from ``centre_seed``. A point: blob k
    uniform, then centre_k + blob_std * Normal(0, I) in the first ``subspace_dim``
    coordinates and exactly 0 in the others. The support is the whole subspace
    (intrinsic dimension ``subspace_dim``): the distance is the norm of the other
    coordinates; the component is the nearest centre.

    Args:
        n_blobs: number of blobs (components).
        dim: natural dimension.
        subspace_dim: dimension of the subspace holding the blobs, <= dim.
        blob_std: standard deviation of each blob.
        spread: half-width of the box the centres are drawn from.
        centre_seed: seed of the centres.
    """

    def __init__(self, n_blobs: int = 3, dim: int = 5, subspace_dim: int = 2, blob_std: float = 0.1,
                 spread: float = 1.0, centre_seed: int = 0, ambient_dim: int | None = None,
                 rotation_seed: int = 0, embedding: list[list[float]] | str | None = None,
                 noise_std: float = 0.0) -> None:
        self.n_components = _check_int("n_blobs", n_blobs, 1)
        dim = _check_int("dim", dim, 1)
        self.intrinsic_dim = _check_int("subspace_dim", subspace_dim, 1)
        if subspace_dim > dim:
            raise ValueError(f"subspace_dim must be <= dim ({dim}), got {subspace_dim!r}")
        self.blob_std = _check_real("blob_std", blob_std, positive=False)
        self.spread = _check_real("spread", spread, positive=True)
        self.centre_seed = _check_seed("centre_seed", centre_seed)
        _check_fits("n_blobs", 24.0 * n_blobs * subspace_dim, f"the centres of {n_blobs} blobs")
        g = torch.Generator().manual_seed(self.centre_seed)
        u = torch.rand(n_blobs, subspace_dim, generator=g, dtype=torch.float64)
        self.loc = self.spread * (2 * u - 1)  # (k, subspace_dim)
        super().__init__(dim, ambient_dim, rotation_seed, noise_std, embedding=embedding)

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randint(0, self.n_components, (n,), generator=generator)
        s = self.intrinsic_dim
        x = torch.zeros(n, self.natural_dim, dtype=torch.float64)
        noise = torch.randn(n, s, generator=generator, dtype=torch.float64)
        x[:, :s] = self.loc[z] + self.blob_std * noise
        return x

    def _distance(self, u: Tensor) -> Tensor:
        return u[:, self.intrinsic_dim :].norm(dim=1)

    def _component(self, u: Tensor) -> Tensor:
        return torch.cdist(u[:, : self.intrinsic_dim], self.loc.to(u.device)).argmin(dim=1)

    def _centres(self) -> Tensor:
        return F.pad(self.loc, (0, self.natural_dim - self.intrinsic_dim))
