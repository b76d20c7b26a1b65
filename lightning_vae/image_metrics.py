"""Image sample quality in the feature space of a small network trained on the data.

Nothing is downloaded: there are no Inception weights here, so the scores are not FID or
the KID of the literature. They are the same statistics computed on the embedding of a
small CNN (``FeatureNet``) that the project trains on the data set's own training split,
deterministically, and caches by content (``feature_net``). Call them "FD / KID in our
feature space"; every score carries the sha256 of the network's weights
(``checkpoint_sha256``), so two numbers are comparable exactly when their hashes agree.

- ``frechet_distance``: Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
  Nash equilibrium").
- ``kid``: the unbiased MMD^2 with a cubic polynomial kernel, averaged over subsets
  (Binkowski et al. 2018, "Demystifying MMD GANs").
- ``precision_recall``: improved precision and recall from k-NN balls (Kynkaanniemi et al.
  2019, "Improved precision and recall metric for assessing generative models").
- ``FeatureSpaceScores``: all of them for images, with the network built (or loaded) once.
- ``add_noise`` and ``blur``: deterministic perturbations the scores are validated with.

The feature network trains on whatever the data offer: class labels (``long`` targets,
cross-entropy), known generating parameters (``float`` targets, MSE on standardised
targets) or nothing (``None``: a decoder head reconstructs the image from the features);
and, always, on measuring the strength of random noise and blur applied to the training
images (``train_feature_net``), without which a small network trained for the target
alone hardly sees pixel-level defects. Images are ``(N, C, H, W)`` float tensors with
H, W >= 8, values roughly in [0, 1]. The statistics run in float64 on the CPU. This
module does not depend on Lightning.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Part of every cache key: bump it whenever the architecture, the training loop or the
# checkpoint format changes, so that no cached network of another recipe is ever reused.
FEATURE_NET_VERSION = 1

# Memory bound of the chunked distance computations: elements of one distance block.
_CHUNK_ELEMENTS = 1 << 22


# --- argument checks ------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value, minimum: float, strict: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _check_features(name: str, x: Tensor, y: Tensor, min_points: int) -> tuple[Tensor, Tensor]:
    """Two feature sets ``(N, D)`` and ``(M, D)``, N, M >= ``min_points``, finite, as float64."""
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or x.ndim != 2 or y.ndim != 2 \
            or x.shape[1] != y.shape[1] or x.shape[1] == 0:
        raise ValueError(f"{name} needs features (N, D) and (M, D) with the same D >= 1, "
                         f"got {_shape(x)} and {_shape(y)}")
    if len(x) < min_points or len(y) < min_points:
        raise ValueError(f"{name} needs >= {min_points} points per set, got {len(x)} and {len(y)}")
    x, y = x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError(f"{name} needs finite features, got NaN or inf")
    return x, y


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_images(name: str, x, shape: tuple[int, ...] | None = None, min_images: int = 1) -> Tensor:
    """Images ``(N, C, H, W)``: floating, finite, H, W >= 8, N >= ``min_images`` and, if
    given, (C, H, W) == ``shape``. Returned detached, as float32 on the CPU."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (N, C, H, W), got "
                         f"{_shape(x) if not isinstance(x, Tensor) else f'{x.dtype} {tuple(x.shape)}'}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have (C, H, W) = {tuple(shape)} like the training images, "
                         f"got {tuple(x.shape[1:])}")
    if x.shape[1] < 1 or x.shape[2] < 8 or x.shape[3] < 8:
        raise ValueError(f"{name} must have C >= 1 and H, W >= 8, got (C, H, W) = {tuple(x.shape[1:])}")
    if len(x) < min_images:
        raise ValueError(f"{name} needs >= {min_images} images, got {len(x)}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return x


# --- the feature network --------------------------------------------------------------------

class FeatureNet(nn.Module):
    """A small deterministic CNN whose penultimate layer is the feature space.

    The input is standardised with the training images' per-channel mean and std (buffers,
    set by ``train_feature_net``), then through 3x3 convolutions, each followed by ReLU:
    for images up to 16 pixels on their short side one of stride 1 (a full-resolution
    layer for small images), then n = max(2, ceil(log2(min(H, W) / 4))) (at most 5) of
    stride 2, which bring the map to at most 4 x 4 (2 x 2 for 8 x 8 digits); channels
    ``width``, ``2 width``, then ``4 width``. ReLU rather than SiLU: a unit at its threshold
    on a flat background responds to noise in proportion to its std, not its variance.
    A global average pool, a
    linear layer to ``feature_dim`` and ReLU give the embedding (``embedding``); ``features``
    is that embedding centred with the training images' embedding mean and divided by one
    scale, the root of its mean per-dimension variance (buffers ``feature_mean`` and
    ``feature_scale``): distances and KID's polynomial kernel then see values of order one
    whatever the training did to the weights' scale. One scale for all dimensions keeps the
    geometry; a per-dimension std would blow up the dimensions that hardly vary over clean
    images, those that respond to degradations.

    On the embedding sit two heads: ``head``, for the training target (a linear layer to
    ``out_dim`` logits or regression outputs, or for ``objective="autoencode"`` a decoder,
    an MLP ``feature_dim -> 256 -> C H W`` that reconstructs the standardised image), and
    ``degradation``, a linear layer to the (square-rooted) strengths of the noise and the
    blur the training applies (see ``train_feature_net``).

    No batch normalisation: every image's features depend on that image alone.
    """

    OBJECTIVES = ("classify", "regress", "autoencode")

    def __init__(self, image_shape: tuple[int, int, int], feature_dim: int = 64, width: int = 16,
                 objective: str = "autoencode", out_dim: int | None = None) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)!r}")
        c, h, w = (_check_int("image_shape", v, 1) for v in image_shape)
        if h < 8 or w < 8:
            raise ValueError(f"image_shape must have H, W >= 8, got {tuple(image_shape)!r}")
        feature_dim = _check_int("feature_dim", feature_dim, 1)
        width = _check_int("width", width, 1)
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, got {objective!r}")
        out_dim = c * h * w if objective == "autoencode" else _check_int("out_dim", out_dim, 1)
        self.image_shape, self.feature_dim, self.width = (c, h, w), feature_dim, width
        self.objective, self.out_dim = objective, out_dim
        self.register_buffer("input_mean", torch.zeros(c))
        self.register_buffer("input_std", torch.ones(c))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

        n_down = min(5, max(2, math.ceil(math.log2(min(h, w) / 4))))
        strides = [2] * n_down if min(h, w) > 16 else [1] + [2] * n_down
        layers: list[nn.Module] = []
        ch = c
        for i, stride in enumerate(strides):
            nxt = width * min(4, 2 ** i)
            layers += [nn.Conv2d(ch, nxt, 3, stride=stride, padding=1), nn.ReLU()]
            ch = nxt
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(ch, feature_dim), nn.ReLU())
        if objective == "autoencode":
            self.head = nn.Sequential(nn.Linear(feature_dim, 256), nn.ReLU(), nn.Linear(256, out_dim))
        else:
            self.head = nn.Linear(feature_dim, out_dim)
        self.degradation = nn.Linear(feature_dim, 2)

    def config(self) -> dict:
        """The constructor's arguments (JSON-able): ``FeatureNet(**net.config())``."""
        return {"image_shape": list(self.image_shape), "feature_dim": self.feature_dim, "width": self.width,
                "objective": self.objective, "out_dim": self.out_dim}

    def standardise(self, x: Tensor) -> Tensor:
        """Images standardised with the training images' per-channel mean and std."""
        return (x - self.input_mean[:, None, None]) / self.input_std[:, None, None]

    def embedding(self, x: Tensor) -> Tensor:
        """The penultimate layer ``(N, feature_dim)`` of images ``(N, C, H, W)``, as the
        heads read it."""
        h = self.trunk(self.standardise(x))
        return self.embed(h.mean(dim=(2, 3)))

    def features(self, x: Tensor) -> Tensor:
        """The feature-space embedding ``(N, feature_dim)`` of images ``(N, C, H, W)``:
        ``(embedding - feature_mean) / feature_scale``."""
        return (self.embedding(x) - self.feature_mean) / self.feature_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(``head``'s output: logits, standardised regression outputs or the flat
        standardised reconstruction; ``degradation``'s ``(N, 2)`` predicted strengths)."""
        e = self.embedding(x)
        return self.head(e), self.degradation(e)


def _init_(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every Conv2d and Linear (kaiming-uniform weights
    with a = sqrt(5), uniform biases in +-1/sqrt(fan_in)), drawn from ``generator``."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(m.weight[0].numel())
            with torch.no_grad():
                m.bias.uniform_(-bound, bound, generator=generator)


def _objective_of(targets: Tensor | None, n: int) -> tuple[str, int | None, Tensor | None]:
    """(objective, out_dim, targets as trained on) from the user's targets."""
    if targets is None:
        return "autoencode", None, None
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a tensor or None, got {type(targets).__name__}")
    if targets.ndim == 0 or len(targets) != n:
        raise ValueError(f"targets must have one row per image ({n}), got shape {tuple(targets.shape)}")
    if targets.dtype == torch.long:
        if targets.ndim != 1 or bool((targets < 0).any()):
            raise ValueError(f"long targets must be class labels >= 0 of shape (N,), got {tuple(targets.shape)}")
        return "classify", int(targets.max()) + 1, targets.detach().cpu()
    if targets.is_floating_point():
        if targets.ndim not in (1, 2) or (targets.ndim == 2 and targets.shape[1] == 0):
            raise ValueError(f"float targets must have shape (N,) or (N, p) with p >= 1, got {tuple(targets.shape)}")
        t = targets.detach().to("cpu", torch.float32).reshape(n, -1)
        if not torch.isfinite(t).all():
            raise ValueError("targets must be finite, got NaN or inf")
        mean, std = t.mean(dim=0), t.std(dim=0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant column stays 0
        return "regress", t.shape[1], (t - mean) / std
    raise ValueError(f"targets must be long class labels or float regression targets, got {targets.dtype}")


# The degradations the feature network learns to measure (train_feature_net): noise std
# up to MAX_NOISE_STD (pixel values in [0, 1]) and blur sigma up to MAX_BLUR_SIGMA pixels.
MAX_NOISE_STD = 0.3
MAX_BLUR_SIGMA = 2.5


def _degrade(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Randomly degraded copies of images ``x`` and their degradation targets ``(B, 2)``.

    Each image independently stays clean, gets Gaussian noise of std ~ U(0, MAX_NOISE_STD)
    or a Gaussian blur of sigma ~ U(0, MAX_BLUR_SIGMA) (probability 1/3 each); the target
    is the square root of (noise std / MAX_NOISE_STD, sigma / MAX_BLUR_SIGMA), 0 where not
    applied.
    """
    b, c, h, w = x.shape
    kind = torch.randint(3, (b,), generator=generator)
    strength = torch.rand(b, generator=generator)
    eps = torch.randn(x.shape, generator=generator)
    noise_std = torch.where(kind == 1, strength, torch.zeros(b))
    sigma = torch.where(kind == 2, strength, torch.zeros(b))
    out = x + (noise_std * MAX_NOISE_STD)[:, None, None, None] * eps
    blurred = kind == 2
    if blurred.any():
        out[blurred] = _blur_each(x[blurred], sigma[blurred] * MAX_BLUR_SIGMA)
    return out, torch.stack([noise_std, sigma], dim=1).sqrt()


def train_feature_net(images: Tensor, targets: Tensor | None = None, *, feature_dim: int = 64, width: int = 16,
                      steps: int = 600, batch_size: int = 128, lr: float = 1e-2, degradation_weight: float = 5.0,
                      seed: int = 0) -> FeatureNet:
    """Train a ``FeatureNet`` on ``images`` ``(N, C, H, W)``; returned in eval mode.

    The target objective follows ``targets``: ``long`` class labels ``(N,)`` ->
    cross-entropy; float ``(N,)`` or ``(N, p)`` -> MSE on the targets standardised per
    column (mean 0, std 1 on the training set); None -> autoencoding (MSE of the decoder
    head's reconstruction of the standardised image). It is computed on the clean images.

    Plus ``degradation_weight`` times a self-supervised term: each batch also goes through
    ``_degrade`` (each image kept clean, noised with std ~ U(0, 0.3) or blurred with sigma ~
    U(0, 2.5) px, a third each) and the ``degradation`` head regresses the square roots of
    the two relative strengths (MSE; the square root stretches the small ones). Without
    it a network trained for the target alone is nearly blind to what a generative model
    gets wrong at the pixel level: on the digits (classes), Gaussian noise of std 0.05
    moved FD by 1% of its held-out value and KID not at all; with it (the default), FD at
    std 0.05 is 13 times the held-out value. It is the network's only knowledge of
    degradations; 0 switches it off.

    Adam at ``lr`` (linear warm-up over the first 5% of ``steps``, then a cosine decay to
    0; gradient norm clipped at 1) over ``steps`` minibatches of ``batch_size`` images
    drawn with replacement. After training, the feature standardisation (``features``)
    is fitted on the training images.

    Deterministic given its inputs, for one torch build and CPU type (other builds or
    instruction sets may sum floats in another order): the initial weights, the batches
    and the degradations come from explicit ``torch.Generator``s seeded with ``seed``;
    everything runs inside ``torch.random.fork_rng`` with ``torch.manual_seed(seed)``,
    leaving the caller's global random state untouched, and on one CPU thread
    (``torch.set_num_threads(1)``, restored afterwards), so that the caller's thread count
    does not change the weights (with 2 threads they differed).
    """
    images = _check_images("images", images, min_images=2)
    n = len(images)
    _check_int("feature_dim", feature_dim, 1)
    _check_int("width", width, 1)
    steps = _check_int("steps", steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    lr = _check_real("lr", lr, 0.0, strict=True)
    degradation_weight = _check_real("degradation_weight", degradation_weight, 0.0)
    seed = _check_int("seed", seed, 0)
    objective, out_dim, y = _objective_of(targets, n)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in one order whatever the caller's thread count
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(images, objective, out_dim, y, feature_dim, width, steps, batch_size, lr,
                          degradation_weight, seed)
    finally:
        torch.set_num_threads(threads)


def _train(images, objective, out_dim, y, feature_dim, width, steps, batch_size, lr, degradation_weight,
           seed) -> FeatureNet:
    """``train_feature_net``'s loop, its arguments checked."""
    n = len(images)
    g_init = torch.Generator().manual_seed(seed)
    g_batch = torch.Generator().manual_seed(seed + 1)
    g_degrade = torch.Generator().manual_seed(seed + 2)
    net = FeatureNet(tuple(images.shape[1:]), feature_dim=feature_dim, width=width,
                     objective=objective, out_dim=out_dim)
    _init_(net, g_init)
    mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
    net.input_mean.copy_(mean)
    net.input_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    net.train()
    b = min(batch_size, n)
    for _ in range(steps):
        idx = torch.randint(n, (b,), generator=g_batch)
        xb = images[idx]
        if degradation_weight > 0:
            xd, d_target = _degrade(xb, g_degrade)
            out, d_pred = net(torch.cat([xb, xd]))
            out, loss = out[:b], degradation_weight * F.mse_loss(d_pred[b:], d_target)
        else:
            out, loss = net(xb)[0], 0.0
        if objective == "classify":
            loss = loss + F.cross_entropy(out, y[idx])
        elif objective == "regress":
            loss = loss + F.mse_loss(out, y[idx])
        else:
            loss = loss + F.mse_loss(out, net.standardise(xb).flatten(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        e = torch.cat([net.embedding(images[i:i + 500]) for i in range(0, n, 500)])
        scale = e.var(dim=0).mean().sqrt()
        net.feature_mean.copy_(e.mean(dim=0))
        net.feature_scale.fill_(float(scale) if scale > 1e-6 else 1.0)
    return net


# --- checkpoints and the cache --------------------------------------------------------------

def state_sha256(net: FeatureNet) -> str:
    """sha256 hex digest identifying a network: over its ``config()`` as canonical JSON,
    then, for every state-dict entry in name order, the name, dtype, shape and the tensor's
    raw bytes (contiguous, on the CPU, native byte order: little-endian on x86 and ARM).

    It depends only on the architecture and the weights, not on how torch.save lays out a
    file, so it is the same for a freshly trained network and one loaded from its cache
    file, and across torch versions. (It is not the sha256 of the ``.pt`` file's bytes.)
    """
    h = hashlib.sha256()
    h.update(json.dumps(net.config(), sort_keys=True).encode())
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$LVAE_CACHE_DIR/features`` if that variable is set, else ``~/.cache/lightning_vae/features``."""
    root = os.environ.get("LVAE_CACHE_DIR")
    return Path(root) / "features" if root else Path.home() / ".cache" / "lightning_vae" / "features"


# train_feature_net's keyword arguments and their defaults (read once, at import).
_TRAIN_DEFAULTS = {k: p.default for k, p in inspect.signature(train_feature_net).parameters.items()
                   if p.kind is p.KEYWORD_ONLY}


def _train_arguments(train_kwargs: Mapping) -> dict:
    """``train_feature_net``'s keyword arguments with every default filled in."""
    unknown = sorted(set(train_kwargs) - set(_TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown feature-net training argument(s) {unknown}; expected some of "
                         f"{sorted(_TRAIN_DEFAULTS)}")
    return {**_TRAIN_DEFAULTS, **train_kwargs}


def _tensor_bytes(h, name: str, t: Tensor | None) -> None:
    if t is None:
        h.update(f"\0{name}\0none\0".encode())
        return
    t = t.detach().to("cpu").contiguous()
    h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.numpy().tobytes())


def cache_key(images: Tensor, targets: Tensor | None = None, **train_kwargs) -> str:
    """sha256 hex digest naming the network ``feature_net`` would train: over
    ``FEATURE_NET_VERSION``, the images (as float32: dtype, shape, bytes), the targets
    (likewise, float targets as float32; or "none") and ``train_feature_net``'s keyword arguments, defaults filled
    in, as canonical JSON."""
    images = _check_images("images", images, min_images=2)
    _objective_of(targets, len(images))  # the training's own checks, before hashing
    if targets is not None and targets.is_floating_point():
        targets = targets.detach().to("cpu", torch.float32)  # what the training sees
    h = hashlib.sha256(f"lightning_vae.image_metrics.FeatureNet v{FEATURE_NET_VERSION}".encode())
    _tensor_bytes(h, "images", images)
    _tensor_bytes(h, "targets", targets)
    h.update(json.dumps(_train_arguments(train_kwargs), sort_keys=True).encode())
    return h.hexdigest()


def _load(path: Path) -> FeatureNet:
    """A cached network; raises (anything) if the file is not a valid checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("version") != FEATURE_NET_VERSION:
        raise ValueError(f"checkpoint version {ckpt.get('version')!r}, expected {FEATURE_NET_VERSION}")
    net = FeatureNet(**{**ckpt["config"], "image_shape": tuple(ckpt["config"]["image_shape"])})
    net.load_state_dict(ckpt["state_dict"], strict=True)
    if state_sha256(net) != ckpt["sha256"]:
        raise ValueError("checkpoint weights do not match their recorded sha256")
    return net.eval()


def _save(net: FeatureNet, path: Path, digest: str) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    buf = io.BytesIO()
    torch.save({"version": FEATURE_NET_VERSION, "config": net.config(), "sha256": digest,
                "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def feature_net(images: Tensor, targets: Tensor | None = None, cache_dir: str | os.PathLike | None = None,
                **train_kwargs) -> tuple[FeatureNet, str]:
    """The ``FeatureNet`` trained on ``images`` (and ``targets``), from the cache if there,
    and its ``state_sha256`` digest.

    The file is ``<cache_dir>/feature-net-<key[:16]>.pt`` with ``key = cache_key(images,
    targets, **train_kwargs)``; ``cache_dir`` defaults to ``default_cache_dir()``. A file
    that does not load (corrupt, truncated, another format) or whose weights do not match
    its recorded digest is retrained and rewritten, atomically; a cache folder that cannot
    be written to gives a warning and an uncached network. Nothing is printed.
    """
    images = _check_images("images", images, min_images=2)
    args = _train_arguments(train_kwargs)
    key = cache_key(images, targets, **args)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"feature-net-{key[:16]}.pt"
    if path.exists():
        try:
            net = _load(path)
            return net, state_sha256(net)
        except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt
            pass
    net = train_feature_net(images, targets, **args)
    digest = state_sha256(net)
    try:
        _save(net, path, digest)
    except OSError as e:
        warnings.warn(f"could not cache the feature network at {path}: {e}", RuntimeWarning, stacklevel=2)
    return net, digest


# --- the scores -----------------------------------------------------------------------------

def _mean_cov(x: Tensor) -> tuple[Tensor, Tensor]:
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, xc.T @ xc / (len(x) - 1)


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clamped at 0)."""
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(f_real: Tensor, f_gen: Tensor) -> Tensor:
    """Frechet distance between Gaussians fitted to two feature sets, a 0-d float64 tensor.

        FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

    with the sample means mu and unbiased covariances S (divisor N - 1) of ``f_real``
    ``(N, D)`` and ``f_gen`` ``(M, D)``, N, M >= 2 (Heusel et al. 2017; the Frechet, or
    2-Wasserstein, distance between two Gaussians, Dowson & Landau 1982).
    Tr (S_1 S_2)^(1/2) is the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix S_1^(1/2) S_2 S_1^(1/2), which has the eigenvalues of S_1 S_2: two symmetric
    eigendecompositions, tiny negative eigenvalues (rounding) clamped at 0, no complex
    matrix square root. In float64; the result is clamped at 0.
    """
    x, y = _check_features("frechet_distance", f_real, f_gen, 2)
    mu1, s1 = _mean_cov(x)
    mu2, s2 = _mean_cov(y)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return fd.clamp_min(0)


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(a, b) = (a . b / D + 1)^3 for every pair of rows, ``(N, M)``: KID's kernel."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _subset_kernel_sums(a: Tensor, b: Tensor, ua: Tensor, ub: Tensor) -> Tensor:
    """For each subset s, sum_{i in A_s, j in B_s} k(a_i, b_j), ``(S,)``: the subsets given
    by 0/1 indicator columns ``ua`` ``(N, S)`` and ``ub`` ``(M, S)``, so the sum is
    ua[:, s]^T K ub[:, s]. The kernel matrix is computed in row chunks (bounded memory)."""
    out = torch.zeros(ua.shape[1], dtype=a.dtype)
    step = _chunk_rows(len(b))
    for start in range(0, len(a), step):
        k = polynomial_kernel(a[start:start + step], b)
        out += ((k @ ub) * ua[start:start + step]).sum(dim=0)
    return out


def _indicators(n: int, draws: list[Tensor]) -> Tensor:
    """0/1 float64 ``(n, len(draws))``: column j marks the rows ``draws[j]``."""
    u = torch.zeros(n, len(draws), dtype=torch.float64)
    for j, idx in enumerate(draws):
        u[idx, j] = 1.0
    return u


def kid(f_real: Tensor, f_gen: Tensor, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[Tensor, Tensor]:
    """Kernel distance: (mean, std) over subsets of the unbiased MMD^2 with the cubic
    polynomial kernel k(a, b) = (a . b / D + 1)^3 (Binkowski et al. 2018), 0-d float64.

    For each of ``n_subsets`` subsets, ``s = min(subset_size, N, M)`` rows are drawn without
    replacement from each of ``f_real`` ``(N, D)`` and ``f_gen`` ``(M, D)`` (N, M >= 2), and

        MMD_u^2 = 1/(s(s-1)) sum_{i != j} k(x_i, x_j) + 1/(s(s-1)) sum_{i != j} k(y_i, y_j)
                  - 2/s^2 sum_{i, j} k(x_i, y_j).

    ``std`` is the population std (divisor ``n_subsets``) of the subset estimates, as in the
    reference implementations: the spread of one subset's estimate, not the standard error
    of the mean; it is 0 when s = N = M (every subset is then the whole of both sets). The
    subsets come from a CPU generator seeded with ``seed`` (for each subset a
    ``torch.randperm`` of the real rows, then one of the generated rows). The estimate is
    unbiased, so it can be slightly negative for two samples of one distribution.

    All subsets at once: each kernel matrix is computed once, in row chunks, and each
    subset's sums are indicator-weighted sums of it (``_subset_kernel_sums``).
    """
    x, y = _check_features("kid", f_real, f_gen, 2)
    n_subsets = _check_int("n_subsets", n_subsets, 1)
    s = min(_check_int("subset_size", subset_size, 2), len(x), len(y))
    g = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    draws_x, draws_y = [], []
    for _ in range(n_subsets):
        draws_x.append(torch.randperm(len(x), generator=g)[:s])
        draws_y.append(torch.randperm(len(y), generator=g)[:s])
    ux, uy = _indicators(len(x), draws_x), _indicators(len(y), draws_y)
    d = x.shape[1]
    diag_x = ((x.square().sum(dim=1) / d + 1) ** 3) @ ux  # sum of k(x_i, x_i) over each subset
    diag_y = ((y.square().sum(dim=1) / d + 1) ** 3) @ uy
    kxx = (_subset_kernel_sums(x, x, ux, ux) - diag_x) / (s * (s - 1))
    kyy = (_subset_kernel_sums(y, y, uy, uy) - diag_y) / (s * (s - 1))
    kxy = _subset_kernel_sums(x, y, ux, uy) / (s * s)
    est = kxx + kyy - 2 * kxy
    return est.mean(), est.std(correction=0)


def _chunk_rows(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each row of ``x`` ``(N, D)`` to its k-th nearest other row, ``(N,)``
    (the point itself excluded; duplicates count as neighbours at distance 0). Chunked:
    at most about 4M distances in memory at once. Needs N > k."""
    n = len(x)
    out = torch.empty(n, dtype=x.dtype)
    step = _chunk_rows(n)
    for start in range(0, n, step):
        d = torch.cdist(x[start:start + step], x, compute_mode="donot_use_mm_for_euclid_dist")
        rows = torch.arange(len(d))
        d[rows, rows + start] = float("inf")
        out[start:start + step] = d.kthvalue(k, dim=1).values
    return out


def _covered(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """Fraction of ``points`` within distance <= radius of at least one centre."""
    hit = torch.zeros(len(points), dtype=torch.bool)
    step = _chunk_rows(len(centres))
    for start in range(0, len(points), step):
        d = torch.cdist(points[start:start + step], centres, compute_mode="donot_use_mm_for_euclid_dist")
        hit[start:start + step] = (d <= radii[None, :]).any(dim=1)
    return hit.to(torch.float64).mean()


def precision_recall(f_real: Tensor, f_gen: Tensor, k: int = 3) -> tuple[Tensor, Tensor]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), 0-d float64 tensors.

    Each set's manifold is the union of closed balls around its points, of radius the
    distance to the point's k-th nearest neighbour in its own set (``knn_radii``). Then

        precision = fraction of generated features inside the real manifold,
        recall    = fraction of real features inside the generated manifold.

    ``f_real`` ``(N, D)``, ``f_gen`` ``(M, D)`` with N, M > k; Euclidean distances in
    float64, computed in chunks (bounded memory: about 4M distances at once).
    """
    k = _check_int("k", k, 1)
    x, y = _check_features("precision_recall", f_real, f_gen, k + 1)
    precision = _covered(y, x, knn_radii(x, k))
    recall = _covered(x, y, knn_radii(y, k))
    return precision, recall


class FeatureSpaceScores:
    """FD, KID and improved precision/recall of generated images IN OUR FEATURE SPACE.

    Built from the training images ``(N, C, H, W)`` (and optional ``targets``, see
    ``train_feature_net``): the feature network comes from ``feature_net`` (trained once,
    then cached in ``cache_dir``), with ``train_kwargs`` (a mapping) as its training
    arguments. ``checkpoint_sha256`` (``state_sha256``) identifies the feature space:
    scores are comparable exactly when it agrees.

    Reading the numbers: FD has a positive finite-sample bias (held-out real digits, 597
    against the 1,200 training images: FD 0.21, precision 0.89, recall 0.94), so compare a
    model's score with that of held-out real images at the same set sizes, not with 0. On
    the digits (``benchmarks/bench_image_metrics.py``) FD rose to 2.8 at Gaussian noise of
    std 0.05, 14 at 0.1, 20 at a blur of sigma 0.5, and to 15 with half of the classes
    dropped (recall 0.55, precision 0.89). Values depend on the feature network, hence on
    the training images: compare scores with the same ``checkpoint_sha256`` only.

    Args: ``k``: the precision/recall neighbourhood; ``n_subsets``, ``subset_size``,
    ``kid_seed``: KID's subsets; ``batch_size``: images per forward pass in ``features``.
    """

    def __init__(self, train_images: Tensor, targets: Tensor | None = None, *,
                 cache_dir: str | os.PathLike | None = None, train_kwargs: Mapping | None = None, k: int = 3,
                 n_subsets: int = 100, subset_size: int = 1000, batch_size: int = 500, kid_seed: int = 0) -> None:
        train_images = _check_images("train_images", train_images, min_images=2)
        if train_kwargs is not None and not isinstance(train_kwargs, Mapping):
            raise ValueError(f"train_kwargs must be a mapping or None, got {type(train_kwargs).__name__}")
        self.k = _check_int("k", k, 1)
        self.n_subsets = _check_int("n_subsets", n_subsets, 1)
        self.subset_size = _check_int("subset_size", subset_size, 2)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.kid_seed = _check_int("kid_seed", kid_seed, 0)
        self.image_shape = tuple(train_images.shape[1:])
        self.net, self.checkpoint_sha256 = feature_net(train_images, targets, cache_dir=cache_dir,
                                                       **dict(train_kwargs or {}))

    @torch.no_grad()
    def features(self, images: Tensor, name: str = "images") -> Tensor:
        """The feature-net embedding of ``images`` ``(N, C, H, W)``, ``(N, feature_dim)``
        float64 on the CPU; in batches of ``batch_size``, without gradients."""
        images = _check_images(name, images, shape=self.image_shape)
        return torch.cat([self.net.features(images[i:i + self.batch_size]).double()
                          for i in range(0, len(images), self.batch_size)])

    def score(self, real_images: Tensor, generated_images: Tensor) -> dict[str, float | str]:
        """``fd``, ``kid``, ``kid_std``, ``precision``, ``recall`` (floats) and
        ``feature_net_sha256`` of ``generated_images`` against ``real_images`` (each
        ``(N, C, H, W)`` with the training images' (C, H, W), finite, > k images)."""
        least = max(2, self.k + 1)
        for name, x in (("real_images", real_images), ("generated_images", generated_images)):
            _check_images(name, x, shape=self.image_shape, min_images=least)
        fr = self.features(real_images, "real_images")
        fg = self.features(generated_images, "generated_images")
        kid_mean, kid_std = kid(fr, fg, self.n_subsets, self.subset_size, self.kid_seed)
        precision, recall = precision_recall(fr, fg, self.k)
        return {"fd": float(frechet_distance(fr, fg)), "kid": float(kid_mean), "kid_std": float(kid_std),
                "precision": float(precision), "recall": float(recall),
                "feature_net_sha256": self.checkpoint_sha256}


# --- perturbations for validation ------------------------------------------------------------

def add_noise(images: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """``images + std * eps`` with eps ~ N(0, 1) drawn on the CPU from ``generator`` (a
    fresh one seeded 0 if None), in ``images``' dtype and device; not clipped."""
    std = _check_real("std", std, 0.0)
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {_shape(images)}")
    g = torch.Generator().manual_seed(0) if generator is None else generator
    eps = torch.randn(images.shape, generator=g, dtype=torch.float64)
    return images + (std * eps).to(images.dtype).to(images.device)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """The normalised 1-D Gaussian weights exp(-t^2 / (2 sigma^2)), t = -r..r with
    r = round(truncate sigma) (scipy.ndimage's support), float64; ``[1.]`` for sigma 0."""
    sigma = _check_real("sigma", sigma, 0.0)
    r = int(truncate * sigma + 0.5)
    if sigma == 0 or r == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _reflect_index(n: int, r: int) -> Tensor:
    """Indices into a length-``n`` axis padded by ``r`` on each side by reflection about
    the edge samples (d c b | a b c d | c b a; torch's "reflect", scipy's "mirror"),
    folded again as often as needed when r >= n."""
    i = torch.arange(-r, n + r)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def blur(images: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Gaussian blur of each channel of ``images`` ``(N, C, H, W)``: a separable kernel
    (``gaussian_kernel1d``), rows then columns, with reflect padding (about the edge
    pixels, scipy.ndimage's mode="mirror"). In ``images``' dtype and device; the same as
    ``scipy.ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="mirror",
    truncate=truncate)``. ``sigma`` 0 returns a copy."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {_shape(images)}")
    _check_real("truncate", truncate, 0.0, strict=True)
    w = gaussian_kernel1d(sigma, truncate).to(images.dtype).to(images.device)
    if len(w) == 1:
        return images.clone()
    r = len(w) // 2
    n, c, h, wd = images.shape
    x = images.reshape(n * c, 1, h, wd)
    x = x.index_select(3, _reflect_index(wd, r).to(images.device))
    x = F.conv2d(x, w.view(1, 1, 1, -1))
    x = x.index_select(2, _reflect_index(h, r).to(images.device))
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return x.reshape(n, c, h, wd)


def _blur_each(images: Tensor, sigmas: Tensor, truncate: float = 4.0) -> Tensor:
    """``blur`` with its own sigma for each image: ``images`` ``(B, C, H, W)``, ``sigmas``
    ``(B,)`` (one kernel width, that of the largest sigma, the smaller kernels' tails 0)."""
    b, c, h, w = images.shape
    r = int(truncate * float(sigmas.max()) + 0.5)
    if r == 0:
        return images.clone()
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    s = sigmas.to(torch.float64).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= (truncate * s + 0.5).floor())
    k = (k / k.sum(dim=1, keepdim=True)).to(images.dtype)
    k = k.repeat_interleave(c, dim=0)  # (B C, K): one kernel per image and channel
    x = images.reshape(1, b * c, h, w)
    x = x.index_select(3, _reflect_index(w, r).to(images.device))
    x = F.conv2d(x, k.view(b * c, 1, 1, -1), groups=b * c)
    x = x.index_select(2, _reflect_index(h, r).to(images.device))
    x = F.conv2d(x, k.view(b * c, 1, -1, 1), groups=b * c)
    return x.reshape(b, c, h, w)
