"""Image data as manifolds: procedural images with an exact generator, and real images.

Images are served to the model as FLAT vectors ``(N, D)``, D = C*H*W, row-major over
(C, H, W): ``x.reshape(N, C, H, W)`` (``images(x)``) recovers them. Every image data set
has ``image_shape`` = (C, H, W) and ``dim`` = C*H*W. There is no embedding (no
``ambient_dim`` / ``rotation_seed``: the pixels are the coordinates); ``noise_std`` adds
isotropic Gaussian pixel noise after generation, drawn from the sampling generator.

- ``ImageManifold``: procedural images x = g(theta), theta uniform in a box of
  ``theta_low`` .. ``theta_high``. ``invert(x)`` finds the nearest point of the manifold
  (a grid search, then projected Levenberg-Marquardt), so ``distance(x)`` is the distance
  to the manifold and the geometry-based metrics work on images.
  ``FadingSquare`` (1-D, closed form) and ``Sprites`` (2-D or 3-D).
- ``Digits`` (scikit-learn's bundled 8x8 digits) and ``ImageFiles`` (a user's images):
  finitely many images, drawn without replacement like ``PointCloud``; no known geometry.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from numbers import Real
from pathlib import Path

import torch
from torch import Tensor

from lightning_vae.data.manifolds import Manifold, _check_int, _check_real
from lightning_vae.data.pointcloud import NoGeometry, _first_line, _read_npy, _torch_load

# Memory budgets (bytes) of the inversion's working tensors: the grid's templates, one chunk
# of the grid search's distance matrix, and one chunk of the refinement's residuals and
# Jacobians. Together well under 200 MB.
_TEMPLATE_BUDGET = 48e6
_SEARCH_BUDGET = 32e6
_REFINE_BUDGET = 64e6


@contextlib.contextmanager
def _quiet_functorch():
    """torch.func's first calls in a process warn that ``torch.jit.script`` (used inside
    torch) is deprecated: nothing a caller can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
        yield


class ImageData(Manifold):
    """Images ``image_shape`` = (C, H, W) served as flat vectors of ``dim`` = C*H*W.

    The shared part of every image data set: no embedding (the base class's
    ``ambient_dim``/``rotation_seed`` are not arguments, and their documentation is not
    appended to the subclasses' Args), ``images(x)`` reshapes.
    """

    image_shape: tuple[int, int, int]

    def __init_subclass__(cls, **kwargs) -> None:
        doc = cls.__doc__
        super().__init_subclass__(**kwargs)  # would append ambient_dim/rotation_seed docs
        cls.__doc__ = doc  # each image class documents its own noise_std

    def __init__(self, image_shape: tuple[int, int, int], noise_std: float = 0.0) -> None:
        self.image_shape = tuple(int(v) for v in image_shape)
        c, h, w = self.image_shape
        super().__init__(c * h * w, ambient_dim=None, noise_std=noise_std)

    def images(self, x: Tensor) -> Tensor:
        """Flat images ``(..., C*H*W)`` as ``(N, C, H, W)``."""
        return x.reshape(-1, *self.image_shape)


# --- procedural images ----------------------------------------------------------------------

class ImageManifold(ImageData):
    """Procedural images x = g(theta) with an exact generator, theta uniform in a box.

    Subclasses set ``theta_names`` (the intrinsic dimension p is their number),
    ``theta_low``/``theta_high`` (float64 ``(p,)``: the box) and implement ``generate``.

    ``invert(x)``: the parameters of the point of the manifold nearest to each row of x.
    A grid search over the box (a product grid of steps at most ``grid_step``, its images
    cached) picks ``n_starts`` starts, the best local minima of the grid; each is refined
    in float64 by a projected, damped Newton method (``_refine``: Levenberg-Marquardt on
    J^T J plus the residual's curvature; ``_jacobian`` and ``_curvature`` by forward-mode
    autodiff, ``torch.func.jvp``, unless a subclass gives them in closed form; a parameter at a bound
    whose gradient points out of the box is held there). After ``prune_after`` steps the
    starts more than ``prune_margin`` (relative) behind their point's best are dropped,
    the others go on, and the best result is kept. Every accepted step lowers the
    residual, so the distance is never above that to the nearest grid image.
    ``distance(x)`` = |x - g(invert(x))|; rows of x that are not finite get NaN. Memory:
    the grid's images (<= 48 MB, the grid coarsened evenly to fit) and chunks of rows
    (<= ~100 MB together).

    Verified (``tests/test_data_images.py``; measured over 12 x 200 draws of each of
    ``Sprites`` disc/square, 2-D/3-D, size 16): noise-free samples are inverted to within
    1e-6 of their theta (measured: exact, 0), distance < 1e-6 (measured 0); for points
    g(theta) + delta with delta orthogonal to the tangent space and |delta| 5-20 % of the
    image's norm, the distance equals |delta| to a relative 1e-3 (measured <= 7e-16:
    theta stays the nearest point); the distance never exceeded the distance to the
    nearest of 5,000 random images of the manifold, for points near it (three times such
    offsets) and far from it (uniform noise images). Far from it a global minimum is
    not guaranteed (basins compete; the grid's step bounds how close two can be and
    still be told apart). Time on one (shared) CPU core, 16 x 16 sprites: about 1 ms a
    point (2 ms for 3 channels); 64 x 64, 3-D: about 20 ms for pure noise images.
    """

    theta_names: tuple[str, ...] = ()
    theta_low: Tensor
    theta_high: Tensor
    n_components = 0
    has_geometry = True
    grid_step: tuple[float, ...] = ()  # the largest grid step per parameter (coarsened to fit)
    n_starts: int = 3  # grid points refined per point
    prune_after: int = 6  # steps before the starts far behind their row's best are dropped
    prune_margin: float = 0.05  # "far behind": a squared distance above (1 + this) times the best
    lm_iterations: int = 40  # the most steps after that

    def __init__(self, image_shape: tuple[int, int, int], noise_std: float = 0.0) -> None:
        super().__init__(image_shape, noise_std)
        self.intrinsic_dim = len(self.theta_names)
        self._templates: dict = {}
        self._grid_counts: tuple[int, ...] = ()

    def generate(self, theta: Tensor) -> Tensor:
        """g(theta): parameters ``(n, p)`` to flat images ``(n, D)``, in theta's dtype and
        device; vectorised and differentiable."""
        raise NotImplementedError

    def sample_theta(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` parameters uniform in the box, ``(n, p)`` float64, from ``generator``."""
        n = _check_int("n", n, 0)
        u = torch.rand(n, self.intrinsic_dim, generator=generator, dtype=torch.float64)
        return self.theta_low + (self.theta_high - self.theta_low) * u

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.generate(self.sample_theta(n, generator))  # float64; sample() returns float32

    def sample_with_theta(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(x, theta)``: the very points ``sample(n, generator)`` returns (float32, with
        the noise), and the float64 parameters they were generated from."""
        n = _check_int("n", n, 0)
        theta = self.sample_theta(n, generator)
        x = self.generate(theta)
        if self.noise_std > 0:  # as Manifold.sample draws it
            x = x + self.noise_std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x.to(torch.float32), theta

    # --- inversion ---

    def _bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.theta_low.to(like.device), self.theta_high.to(like.device)

    def grid(self) -> Tensor:
        """The grid search's parameters, ``(G, p)`` float64: a product grid over the box with
        steps at most ``grid_step``, coarsened evenly when its images would exceed the
        template memory budget."""
        span = (self.theta_high - self.theta_low).tolist()
        counts = [max(2, math.ceil(s / h) + 1) if s > 0 else 1 for s, h in zip(span, self.grid_step)]
        most = max(2 ** self.intrinsic_dim, int(_TEMPLATE_BUDGET // (8 * self.dim)))
        while math.prod(counts) > most:
            counts = [max(2, math.ceil(c * 0.9)) if c > 2 else c for c in counts]
        self._grid_counts = tuple(counts)
        axes = [torch.linspace(lo, hi, c, dtype=torch.float64)
                for lo, hi, c in zip(self.theta_low.tolist(), self.theta_high.tolist(), counts)]
        return torch.cartesian_prod(*axes).reshape(-1, self.intrinsic_dim)

    def _grid_images(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The grid, its images ``(G, D)`` and their squared norms, float64 on ``device``."""
        key = str(device)
        if key not in self._templates:
            theta = self.grid().to(device)
            t = self.generate(theta).to(torch.float64)
            self._templates = {key: (theta, t, (t * t).sum(1))}  # one device at a time
        return self._templates[key]

    def _jacobian(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """g(theta) ``(n, D)`` and its Jacobian ``(n, D, p)`` (forward mode, one pass per
        parameter: each row of g depends on its own row of theta only)."""
        from torch.func import jvp

        cols, out = [], None
        for i in range(theta.shape[1]):
            e = torch.zeros_like(theta)
            e[:, i] = 1
            with _quiet_functorch():
                out, col = jvp(self.generate, (theta,), (e,))
            cols.append(col)
        return out, torch.stack(cols, -1)

    def _curvature(self, theta: Tensor, r: Tensor) -> Tensor:
        """sum_i r_i Hess g_i(theta), ``(m, p, p)``: the part of the Hessian of |g - x|^2 / 2
        that Gauss-Newton leaves out (large where the residual ``r`` is large), by
        forward-mode autodiff of J^T r with r held fixed."""
        from torch.func import jvp

        def jtr(t: Tensor) -> Tensor:
            return (self._jacobian(t)[1].transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)

        cols = []
        for i in range(theta.shape[1]):
            e = torch.zeros_like(theta)
            e[:, i] = 1
            with _quiet_functorch():
                cols.append(jvp(jtr, (theta,), (e,))[1])
        s = torch.stack(cols, -1)
        return (s + s.transpose(1, 2)) / 2

    def _refine(self, x: Tensor, theta: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
        """Projected, damped Newton (Levenberg-Marquardt on the full Hessian, J^T J plus the
        residual's curvature, shifted to be positive definite: every step is a descent
        direction) from ``theta`` ``(m, p)`` towards the nearest point to ``x`` ``(m, D)``;
        returns (theta, squared residual), both float64. Gauss-Newton alone converges
        slowly far from the manifold, where the residual's curvature is not small. A row
        stops when the step proposed (accepted or not) moves no parameter by more than
        1e-10 (1 + |theta|), or its damping has grown to 1e10; all after ``iterations``."""
        low, high = self._bounds(x)
        p = theta.shape[1]
        eye = torch.eye(p, dtype=x.dtype, device=x.device)
        gx, jac = self._jacobian(theta)
        r = gx - x
        cost = (r * r).sum(1)
        lam = torch.full((len(x),), 1e-3, dtype=x.dtype, device=x.device)
        rows = torch.arange(len(x), device=x.device)  # the rows still moving
        for _ in range(iterations):
            if len(rows) == 0:
                break
            th, rr, jj, cc, ll = theta[rows], r[rows], jac[rows], cost[rows], lam[rows]
            gn = jj.transpose(1, 2) @ jj  # (m, p, p): the Gauss-Newton part
            b = (jj.transpose(1, 2) @ rr.unsqueeze(-1)).squeeze(-1)  # (m, p): half the gradient
            held = ((th <= low) & (b > 0)) | ((th >= high) & (b < 0))  # pushing out of the box
            free = (~held).to(x.dtype)
            mask = free.unsqueeze(-1) * free.unsqueeze(-2)
            diag = torch.diagonal(gn * mask, dim1=-2, dim2=-1)
            a = (gn + self._curvature(th, rr)) * mask
            a = a + torch.diag_embed(ll.unsqueeze(-1) * diag + 1e-12) + eye * (1 - free).unsqueeze(-1)
            low_eig = torch.linalg.eigvalsh(a)[:, 0]  # shift up to positive definite
            scale = diag.amax(1) + 1e-12
            a = a + eye * (-low_eig + 1e-6 * scale).clamp(min=0).view(-1, 1, 1)
            step = -torch.linalg.solve(a, (b * free).unsqueeze(-1)).squeeze(-1)
            new = torch.minimum(torch.maximum(th + step, low), high)
            g_new, j_new = self._jacobian(new)
            r_new = g_new - x[rows]
            c_new = (r_new * r_new).sum(1)
            ok = c_new < cc
            theta[rows] = torch.where(ok.unsqueeze(-1), new, th)
            r[rows] = torch.where(ok.unsqueeze(-1), r_new, rr)
            jac[rows] = torch.where(ok.view(-1, 1, 1), j_new, jj)
            cost[rows] = torch.where(ok, c_new, cc)
            ll = torch.where(ok, ll * 0.1, ll * 10).clamp(1e-12, 1e10)
            lam[rows] = ll
            moved = (new - th).abs().amax(1)  # the step proposed, accepted or not
            rows = rows[~((moved < 1e-10 * (1 + th.abs().amax(1))) | (ll >= 1e10))]
        return theta, cost

    def _starts(self, d2: Tensor, k: int) -> Tensor:
        """The ``k`` grid points to refine from, ``(rows, k)`` indices into the grid, given the
        squared distances ``d2`` ``(rows, G)`` to the grid's images: the best LOCAL minima of
        the grid (no grid neighbour nearer; neighbouring grid points tend to share a basin,
        so the plain k best would often be k starts in one basin), then the best others."""
        counts = self._grid_counts
        if 1 <= len(counts) <= 3 and math.prod(counts) == d2.shape[1]:
            import torch.nn.functional as F

            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(counts) - 1]
            neg = -d2.reshape(len(d2), 1, *counts)
            best_near = -pool(neg, kernel_size=3, stride=1, padding=1).reshape(d2.shape)
            d2 = torch.where(d2 <= best_near, d2, d2 + 1e30)  # local minima first
        return d2.topk(k, dim=1, largest=False).indices

    def _invert64(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """theta_hat ``(N, p)`` and the squared distance ``(N,)`` of float64 ``x`` ``(N, D)``
        (NaN for rows that are not finite: a diverged model's samples)."""
        finite = torch.isfinite(x).all(1)
        if not bool(finite.all()):
            theta, cost = self._invert64(x[finite])
            theta_out = torch.full((len(x), self.intrinsic_dim), math.nan, dtype=torch.float64, device=x.device)
            cost_out = torch.full((len(x),), math.nan, dtype=torch.float64, device=x.device)
            theta_out[finite], cost_out[finite] = theta, cost
            return theta_out, cost_out
        n, p = len(x), self.intrinsic_dim
        theta_out = torch.empty(n, p, dtype=torch.float64, device=x.device)
        cost_out = torch.empty(n, dtype=torch.float64, device=x.device)
        if n == 0:
            return theta_out, cost_out
        grid, t, t2 = self._grid_images(x.device)
        k = min(self.n_starts, len(grid))
        rows = max(1, int(min(_SEARCH_BUDGET // (8 * len(grid)),
                              _REFINE_BUDGET // (8 * self.dim * (4 * p + 16) * k))))  # measured
        for s in range(0, n, rows):
            xc = x[s : s + rows]
            d2 = (xc * xc).sum(1, keepdim=True) - 2 * xc @ t.T + t2  # (rows, G)
            start = self._starts(d2, k)  # (rows, k)
            xs = xc.repeat_interleave(k, 0)
            theta, cost = self._refine(xs, grid[start.reshape(-1)], self.prune_after)
            # The starts still far behind their row's best after a few steps are dropped:
            # for points near the manifold that is all but the best, and far from it, where
            # basins compete, they are within the margin and go on.
            lead = cost.view(-1, k).amin(1, keepdim=True)
            keep = (cost.view(-1, k) <= lead * (1 + self.prune_margin) + 1e-12).reshape(-1)
            go = keep.nonzero().flatten()
            theta[go], cost[go] = self._refine(xs[go], theta[go], self.lm_iterations)
            cost = torch.where(keep, cost, torch.inf)
            best = cost.view(-1, k).argmin(1)
            pick = torch.arange(len(xc), device=x.device) * k + best
            theta_out[s : s + rows], cost_out[s : s + rows] = theta[pick], cost[pick].clamp(min=0)
        return theta_out, cost_out

    def _project(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest point's parameters ``(N, p)`` and the distance to it ``(N,)`` of each
        row of ``u`` (pixels), both float64: one inversion gives both."""
        theta, squared = self._invert64(u)
        return theta, squared.sqrt()

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(invert(x), distance(x))`` from one inversion, float64: what a caller that needs
        both (the image-quality callback) asks for."""
        with torch.no_grad():
            return self._project(self._natural(x)[0])

    def invert(self, x: Tensor) -> Tensor:
        """The parameters of the nearest point of the manifold to each row of ``x``
        ``(N, D)``: ``(N, p)`` float64 (computed in float64 on x's device)."""
        return self.project(x)[0]

    def _distance(self, u: Tensor) -> Tensor:
        with torch.no_grad():
            return self._project(u)[1]


class FadingSquare(ImageManifold):
    """A square of fading intensity on a black background: a 1-D manifold (a segment).

    Zero images except a ``square`` x ``square`` block, the same in every channel, of
    intensity v ~ U(0, 1), its top-left pixel at ((size - square) // 2, (size - square) //
    2) (centred). theta = (v,): x = v s with s the image of the block at intensity 1, so the
    manifold is the segment {v s : v in [0, 1]} of R^(C*size*size). Its distance and
    inversion are in closed form, exact: v* = clip(<x, s> / |s|^2, 0, 1), d = |x - v* s|.

    Args:
        size: height and width of the images, in pixels.
        square: side of the square, in pixels (<= size).
        channels: number of channels C (the square is in all of them).
        noise_std: std of isotropic Gaussian pixel noise added after generation, drawn from
            the sampling generator (0: data exactly on the manifold).
    """

    theta_names = ("v",)
    grid_step = (1 / 64,)  # the generic inversion's, unused by the closed form

    def __init__(self, size: int = 32, square: int = 6, channels: int = 1, noise_std: float = 0.0) -> None:
        self.size = _check_int("size", size, 1)
        self.square = _check_int("square", square, 1)
        if self.square > self.size:
            raise ValueError(f"square must be <= size ({self.size}), got {square!r}")
        self.channels = _check_int("channels", channels, 1)
        self.theta_low = torch.zeros(1, dtype=torch.float64)
        self.theta_high = torch.ones(1, dtype=torch.float64)
        super().__init__((self.channels, self.size, self.size), noise_std)
        a = (self.size - self.square) // 2
        mask = torch.zeros(self.image_shape, dtype=torch.float64)
        mask[:, a : a + self.square, a : a + self.square] = 1
        self.template = mask.reshape(-1)  # s: (D,)

    def __repr__(self) -> str:
        return f"FadingSquare(size={self.size}, square={self.square}, channels={self.channels})"

    def generate(self, theta: Tensor) -> Tensor:
        return theta[:, :1] * self.template.to(theta.device, theta.dtype)

    has_tangent = True

    def tangent(self, x: Tensor) -> Tensor:
        """The tangent of the segment {v s}: s / |s| everywhere, ``(N, D, 1)`` float64."""
        s = self.template.to(x.device)
        return (s / s.norm()).expand(len(x), -1)[:, :, None]

    def _project(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Exact: the projection onto the segment {v s : v in [0, 1]}."""
        s = self.template.to(u.device)
        v = ((u @ s) / (s @ s)).clamp(0, 1)
        return v.unsqueeze(1), (u - v.unsqueeze(1) * s).norm(dim=1)


class Sprites(ImageManifold):
    """A soft white disc or square on a black background, at a varying position (and size).

    Pixel (row i, column j) of a sprite of radius (half-width) r centred at column u and
    row v, in pixel coordinates (pixel centres at 0 .. size - 1):

        value = sigmoid((r - d) / softness),
        d = sqrt(dx^2 + dy^2 + c^2)  (disc),   d = (dx^8 + dy^8 + c^8)^(1/8)  (square),

    dx = j - u, dy = i - v, c = ``CORE`` = 0.05 px, the same in every channel. The
    square's d is the Chebyshev distance max(|dx|, |dy|) smoothed (between it and 1.09
    times it, equal along the axes: the corners slightly rounded), and c rounds both off
    within about c of the centre (d = c there, not 0; 0.0004 px further at d = 3): g is
    then smooth in theta everywhere, so the inversion's Newton steps converge (with the
    exact max and with c -> 0 the kinks stall them). theta = (u, v) with u, v uniform in
    [r_max, size - 1 - r_max] (the sprite stays inside the image) and r = ``radius`` (a
    2-D manifold), or theta = (u, v, r) with r uniform in ``scale_range`` (3-D). The
    distance to the manifold is by inversion (``ImageManifold``), with the Jacobian in
    closed form.

    Args:
        size: height and width of the images, in pixels.
        shape: ``"disc"`` or ``"square"``.
        scale_range: ``[r_min, r_max]``: the radius varies, uniform in it (theta 3-D);
            ``None``: the radius is fixed (theta 2-D).
        softness: width of the soft edge, in pixels (> 0).
        radius: the fixed radius (with ``scale_range`` None); ``None``: size / 6.
        channels: number of channels C.
        noise_std: std of isotropic Gaussian pixel noise added after generation, drawn from
            the sampling generator (0: data exactly on the manifold).
    """

    SHAPES = ("disc", "square")
    CORE = 0.05  # pixels: d is rounded off within about this of the centre (smooth in theta)

    def __init__(self, size: int = 16, shape: str = "disc", scale_range: tuple[float, float] | None = None,
                 softness: float = 1.0, radius: float | None = None, channels: int = 1,
                 noise_std: float = 0.0) -> None:
        self.size = _check_int("size", size, 2)
        if shape not in self.SHAPES:
            raise ValueError(f"shape must be one of {', '.join(map(repr, self.SHAPES))}, got {shape!r}")
        self.shape = shape
        self.softness = _check_real("softness", softness, positive=True)
        self.channels = _check_int("channels", channels, 1)
        fits = f" (the sprite must fit in the {self.size}-pixel image: 2 r < size - 1 = {self.size - 1})"
        if scale_range is None:
            self.radius = self.size / 6 if radius is None else _check_real("radius", radius, positive=True)
            if not 2 * self.radius < self.size - 1:
                raise ValueError(f"radius must be < {(self.size - 1) / 2:g}{fits}, got {radius!r}")
            self.scale_range = None
            r_max = self.radius
            self.theta_names = ("u", "v")
            # Far from the manifold (pure noise images) the basins of squares can lie a
            # quarter of a pixel apart: at 0.25 px the grid missed the best in 9 of 2,400.
            self.grid_step = (0.15, 0.15)
        else:
            if radius is not None:
                raise ValueError(f"radius must be None when scale_range is given (the radius varies in "
                                 f"scale_range), got radius={radius!r}")
            if (not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2
                    or not all(isinstance(v, Real) and not isinstance(v, bool) for v in scale_range)):
                raise ValueError(f"scale_range must be a pair [r_min, r_max] of numbers or None, got {scale_range!r}")
            r_min = _check_real("scale_range[0]", scale_range[0], positive=True)
            r_max = _check_real("scale_range[1]", scale_range[1], positive=True)
            if not r_min < r_max:
                raise ValueError(f"scale_range must have r_min < r_max, got {list(scale_range)!r}")
            if not 2 * r_max < self.size - 1:
                raise ValueError(f"scale_range[1] must be < {(self.size - 1) / 2:g}{fits}, got {scale_range[1]!r}")
            self.radius = None
            self.scale_range = (r_min, r_max)
            self.theta_names = ("u", "v", "r")
            self.grid_step = (0.5, 0.5, 0.5)
        lo, hi = [r_max, r_max], [self.size - 1 - r_max] * 2
        if self.scale_range is not None:
            lo.append(self.scale_range[0])
            hi.append(self.scale_range[1])
        self.theta_low = torch.tensor(lo, dtype=torch.float64)
        self.theta_high = torch.tensor(hi, dtype=torch.float64)
        super().__init__((self.channels, self.size, self.size), noise_std)

    def __repr__(self) -> str:
        scale = f"radius={self.radius:g}" if self.scale_range is None else f"scale_range={list(self.scale_range)}"
        return f"Sprites(size={self.size}, shape={self.shape!r}, {scale}, softness={self.softness:g})"

    def _parts(self, theta: Tensor):
        """dx ``(n, 1, W)``, dy ``(n, H, 1)`` (column - u, row - v), the distance d and the image
        ``(n, H, W)``."""
        coords = torch.arange(self.size, dtype=theta.dtype, device=theta.device)
        dx = coords.view(1, 1, -1) - theta[:, 0].view(-1, 1, 1)  # (n, 1, W)
        dy = coords.view(1, -1, 1) - theta[:, 1].view(-1, 1, 1)  # (n, H, 1)
        e = self.CORE
        if self.shape == "disc":
            d = torch.sqrt(dx * dx + dy * dy + e * e)
        else:  # the Chebyshev distance max(|dx|, |dy|), smoothed: between it and 1.09 times it
            d = (dx ** 8 + dy ** 8 + e ** 8) ** 0.125
        r = theta[:, 2].view(-1, 1, 1) if self.scale_range is not None else self.radius
        return dx, dy, d, torch.sigmoid((r - d) / self.softness)

    def _flat(self, img: Tensor) -> Tensor:
        """``(n, H, W)`` to flat ``(n, C*H*W)``, the same image in every channel."""
        n = img.shape[0]
        return img.unsqueeze(1).expand(n, self.channels, self.size, self.size).reshape(n, -1)

    def generate(self, theta: Tensor) -> Tensor:
        return self._flat(self._parts(theta)[3])

    def _jacobian(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        # In closed form, one pass (ImageManifold's forward-mode autodiff takes p passes).
        dx, dy, d, img = self._parts(theta)
        slope = img * (1 - img) / self.softness  # d value / d (r - d)
        if self.shape == "disc":
            du, dv = dx / d, dy / d  # -(d d / d u), -(d d / d v)
        else:
            d7 = d ** 7
            du, dv = dx ** 7 / d7, dy ** 7 / d7
        cols = [slope * du, slope * dv] + ([slope] if self.scale_range is not None else [])
        return self._flat(img), torch.stack([self._flat(c.expand_as(img)) for c in cols], -1)

    def _curvature(self, theta: Tensor, r: Tensor) -> Tensor:
        # In closed form: g = sigmoid(z), z = (r - d) / softness, so
        # Hess g = sigmoid''(z) grad z grad z^T + sigmoid'(z) Hess z, Hess z = -Hess d / softness
        # (d depends on u, v only); the channels share g, so their residuals are summed.
        dx, dy, d, img = self._parts(theta)
        n, s, c = len(theta), self.softness, self.CORE
        res = r.view(n, self.channels, self.size, self.size).sum(1)  # (n, H, W)
        d1 = img * (1 - img)  # sigmoid'
        d2 = d1 * (1 - 2 * img)  # sigmoid''
        if self.shape == "disc":
            d3 = d ** 3
            du, dv = dx / d, dy / d
            hxx, hyy, hxy = (dy * dy + c * c) / d3, (dx * dx + c * c) / d3, -dx * dy / d3
        else:
            d7 = d ** 7
            d15 = d7 * d7 * d
            du, dv = dx ** 7 / d7, dy ** 7 / d7
            hxx = 7 * dx ** 6 / d7 - 7 * dx ** 14 / d15
            hyy = 7 * dy ** 6 / d7 - 7 * dy ** 14 / d15
            hxy = -7 * dx ** 7 * dy ** 7 / d15
        grad = [du.expand_as(img) / s, dv.expand_as(img) / s]
        if self.scale_range is not None:
            grad.append(torch.full_like(img, 1 / s))
        hess_d = [[hxx, hxy], [hxy, hyy]]
        p = len(grad)
        out = torch.empty(n, p, p, dtype=theta.dtype, device=theta.device)
        for i in range(p):
            for k in range(i, p):
                term = d2 * grad[i] * grad[k]
                if i < 2 and k < 2:
                    term = term - d1 * hess_d[i][k] / s
                out[:, i, k] = out[:, k, i] = (res * term).sum((1, 2))
        return out


# --- finite sets of images ------------------------------------------------------------------

class _FiniteImages(NoGeometry, ImageData):
    """Finitely many images ``points`` ``(P, D)``, drawn without replacement; no known
    geometry (``NoGeometry``)."""

    points: Tensor

    @property
    def n_points(self) -> int:
        """How many images there are: the most ``sample`` can draw."""
        return len(self.points)

    def draw_indices(self, n: int, generator: torch.Generator) -> Tensor:
        """The rows of ``points`` that ``sample(n, generator)`` returns, in order, ``(n,)``
        long: distinct rows in an order drawn from the generator. Replaying a data seed
        (``torch.Generator().manual_seed(data_seed)``) gives the rows of the datamodule's
        splits (``x.split([n_train, n_val, n_test])`` of ``sample(n_train + n_val + n_test)``)."""
        n = _check_int("n", n, 0)
        if n > len(self.points):
            raise ValueError(f"{self!r} holds {len(self.points)} images; "
                             f"the splits need {n} (n_train + n_val + n_test)")
        return torch.randperm(len(self.points), generator=generator)[:n]

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.points[self.draw_indices(n, generator)]


class Digits(_FiniteImages):
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, image_shape (1, 8, 8).

    Read from the installed scikit-learn (``sklearn.datasets.load_digits``: no download),
    pixels / 16, in [0, 1]. ``labels``: the digit of each row of ``points`` (long, 0-9).
    Drawn without replacement (distinct images, so the splits are disjoint);
    ``draw_indices`` gives the rows drawn, ``labels_of(x)`` the digits of given images.
    No known manifold: ``distance`` and ``component`` raise NotImplementedError.

    Args:
        noise_std: std of isotropic Gaussian pixel noise added to the drawn images, from the
            sampling generator (0: the images as they are).
    """

    def __init__(self, noise_std: float = 0.0) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ValueError("Digits needs scikit-learn: pip install 'lightning_vae[images]'") from e
        data = load_digits()
        self.points = torch.as_tensor(data.data, dtype=torch.float64).div(16).to(torch.float32).contiguous()
        self.labels = torch.as_tensor(data.target, dtype=torch.long)
        super().__init__((1, 8, 8), noise_std)

    def __repr__(self) -> str:
        return f"Digits(noise_std={self.noise_std:g})" if self.noise_std else "Digits()"

    def labels_of(self, x: Tensor) -> Tensor:
        """The digit of each row of ``x`` ``(N, 64)``: that of the nearest image of the data
        set (exact for drawn images without noise: the 1,797 images are distinct), ``(N,)``
        long."""
        u = self._natural(x)[0]
        pts = self.points.to(u.device, torch.float64)
        out = torch.empty(len(u), dtype=torch.long, device=u.device)
        for s in range(0, len(u), 4096):
            out[s : s + 4096] = torch.cdist(u[s : s + 4096], pts).argmin(1)
        return self.labels.to(u.device)[out]


IMAGE_SUFFIXES = (".npy", ".pt")


def _memory_check(path: Path, shape: tuple) -> None:
    from lightning_vae.preflight import memory_problem, size_text

    needed = 2.0 * 4 * math.prod(int(v) for v in shape)
    problem = memory_problem(needed)
    if problem is not None:
        raise ValueError(f"{path} holds {' x '.join(map(str, shape))} pixel values; reading them would take "
                         f"about {size_text(needed)}, {problem}; expected fewer or smaller images")


def _npy_dtype(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False, mmap_mode="r").dtype
    except Exception:  # noqa: BLE001 - reported by _read_npy
        return None


def _read_pt_images(path: Path) -> tuple[Tensor, bool]:
    """A tensor from a ``.pt`` file (as ``pointcloud._read_pt``), and whether it was uint8."""
    obj = _torch_load(path, "; expected a .pt file holding one image tensor")
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path} must hold a tensor of images, got {type(obj).__name__}")
    if obj.is_complex() or obj.dtype == torch.bool or not (obj.is_floating_point() or obj.dtype == torch.uint8):
        raise ValueError(f"{path} must hold uint8 (0-255) or float pixel values, got dtype {obj.dtype}")
    _memory_check(path, tuple(obj.shape))
    return obj.detach().to(torch.float32), obj.dtype == torch.uint8


def _read_array(path: Path) -> Tensor:
    if path.suffix.lower() == ".pt":
        x, was_uint8 = _read_pt_images(path)
    else:
        dtype = _npy_dtype(path)  # None: unreadable, reported by _read_npy
        if dtype is not None and not (dtype.kind == "f" or (dtype.kind == "u" and dtype.itemsize == 1)):
            raise ValueError(f"{path} must hold uint8 (0-255) or float pixel values, got dtype {dtype}")
        x = _read_npy(path)
        was_uint8 = dtype is not None and dtype.kind == "u"
    if was_uint8:
        x = x / 255
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim != 4:
        raise ValueError(f"{path} must hold images of shape (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{path} must hold 1 or 3 channels (shape (N, C, H, W) with C 1 or 3), got "
                         f"{x.shape[1]} channels in shape {tuple(x.shape)}")
    return x


_MODES = {"L": 1, "RGB": 3, "RGBA": 3}


def _read_png_folder(path: Path) -> Tensor:
    import numpy as np
    from PIL import Image

    files = sorted(f for f in path.iterdir() if f.suffix.lower() == ".png" and f.is_file())
    if not files:
        raise ValueError(f"{path} is a folder with no .png files; expected a folder of .png images "
                         f"(or a .npy/.pt file of images)")
    arrays, first = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                mode, size = im.mode, im.size
                if mode not in _MODES:
                    raise ValueError(f"{f} has image mode {mode!r}; expected a grayscale (L), RGB or RGBA "
                                     f"PNG")
                a = np.asarray(im.convert("RGB") if mode == "RGBA" else im, dtype=np.uint8)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError ...
            raise ValueError(f"{f} could not be decoded as a PNG: {_first_line(e)}; expected a valid .png "
                             f"image") from e
        if first is None:
            first = (f, mode, size)
            _memory_check(path, (len(files), _MODES[mode], size[1], size[0]))
        elif size != first[2]:
            raise ValueError(f"{path}: images of different sizes: {first[0].name} is {first[2][0]}x{first[2][1]}, "
                             f"{f.name} is {size[0]}x{size[1]} (width x height); expected all the same size")
        elif _MODES[mode] != _MODES[first[1]]:
            raise ValueError(f"{path}: images of different modes: {first[0].name} is {first[1]}, {f.name} is "
                             f"{mode}; expected all grayscale (L) or all RGB/RGBA")
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).to(torch.float32) / 255  # (N, H, W) or (N, H, W, 3)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def load_images(path: str | Path) -> Tensor:
    """Images ``(N, C, H, W)`` float32 (C 1 or 3) from a ``.npy``/``.pt`` array or a folder of
    ``.png`` files, validated; uint8 values and PNG pixels are divided by 255."""
    p = Path(path)
    if p.is_dir():
        x = _read_png_folder(p)
    elif not p.exists():
        raise ValueError(f"image path not found: {path}; expected a .npy or .pt file of images or a folder "
                         f"of .png files")
    elif p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {p.suffix!r}; expected a .npy or .pt file of images "
                         f"or a folder of .png files")
    else:
        try:
            x = _read_array(p)
        except OSError as e:
            raise ValueError(f"{path} could not be read: {e.strerror or e}; expected a readable image "
                             f"file") from e
    bad = ~torch.isfinite(x)
    if bad.any():
        i, c, r, q = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{path} holds {int(bad.sum())} non-finite values (NaN, inf, or beyond float32), the "
                         f"first in image {i}, channel {c}, row {r}, column {q} (from 0); expected finite "
                         f"pixel values")
    if len(x) < 2:
        raise ValueError(f"{path} holds {len(x)} image{'s' if len(x) != 1 else ''}; expected at least 2 images")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{path} holds empty images of shape {tuple(x.shape[1:])}; expected H, W >= 1")
    return x.contiguous()


class ImageFiles(_FiniteImages):
    """A user's own images, drawn without replacement.

    From a ``.npy`` or ``.pt`` array of shape (N, H, W) (one channel) or (N, C, H, W) with
    C 1 or 3 (uint8 divided by 255, floats kept as float32), or a folder of ``.png`` files
    (sorted by file name; grayscale ``L`` -> 1 channel, ``RGB``/``RGBA`` -> 3 channels, the
    alpha dropped; divided by 255; all of one size). Validated on load. ``sample(n)``
    returns n distinct images (``draw_indices``), so the splits never share one. No known
    manifold: ``distance`` and ``component`` raise NotImplementedError.

    Args:
        path: a ``.npy``/``.pt`` file of images, or a folder of ``.png`` files.
        noise_std: std of isotropic Gaussian pixel noise added to the drawn images, from the
            sampling generator (0: the images as they are).
    """

    def __init__(self, path: str, noise_std: float = 0.0) -> None:
        self.path = str(path)
        images = load_images(self.path)  # (N, C, H, W)
        self.points = images.reshape(len(images), -1)
        super().__init__(tuple(images.shape[1:]), noise_std)

    def __repr__(self) -> str:
        return f"ImageFiles({self.path!r})"
