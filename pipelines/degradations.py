"""The weak Real-ESRGAN-style degradation of the A-FINE enhancer (``params_weak_degra.yml``) and the
GT-only down/up blur, in torch + Pillow (no basicsr, no OpenCV, no torchvision).

All randomness comes from a ``numpy.random.Generator`` passed by the caller (noise tensors are drawn
from a torch generator seeded from it), so a seed reproduces a degradation exactly. Every draw is
returned in ``params`` (JSON-serialisable) so that generators can record them.

Images are float tensors ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1] (RGB).

Differences from the official code (all documented in docs/enhancer.md):

* JPEG uses Pillow (libjpeg, 4:2:0, quality rounded to an integer) instead of basicsr's DiffJPEG,
  whose float quantisation tables give slightly different artefacts;
* the second-stage kernel ``k2``, drawn but never used by the official code (second stage
  probability 0), is not drawn.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "WeakDegradationConfig",
    "WeakDegradation",
    "DegradationResult",
    "gt_only_downsample",
    "random_augment",
    "filter2d",
    "circular_lowpass_kernel",
    "bivariate_kernel",
    "random_mixed_kernel",
    "jpeg_compress",
    "add_gaussian_noise",
    "add_poisson_noise",
]

RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass
class WeakDegradationConfig:
    """The settings of ``params_weak_degra.yml`` (defaults) that the weak degradation uses."""

    scale_range: tuple[float, float] = (1.0, 1.5)
    resize_prob: tuple[float, float, float] = (0.1, 0.85, 0.05)  # up, down, keep
    resize_range: tuple[float, float] = (0.8, 1.1)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (0.0, 13.0)  # sigma in 8-bit levels
    poisson_scale_range: tuple[float, float] = (0.0, 0.9)
    gray_noise_prob: float = 0.1
    jpeg_range: tuple[float, float] = (75.0, 95.0)
    final_jpeg_range: tuple[float, float] = (90.0, 95.0)  # ``jpeg_range2`` of the yml
    kernel_sizes: tuple[int, ...] = (3, 5, 7, 9)
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    betag_range: tuple[float, float] = (0.0, 0.8)
    betap_range: tuple[float, float] = (0.0, 0.4)
    final_sinc_prob: float = 0.1
    final_sinc_sizes: tuple[int, ...] = (3, 5, 7)
    final_order_prob: float = 0.5  # p of [resize -> sinc -> JPEG] (else [JPEG -> resize -> sinc])


@dataclass
class DegradationResult:
    """``lq``: degraded image ``(1, 3, H, W)`` in [0, 1], quantised to 8 bits; ``gt_only_downsample``:
    the GT resized down by ``scale`` and back, ``(1, 3, H, W)``, *not* clamped or quantised (as in the
    official code); ``gt``: the (augmented) GT; ``params``: every random draw."""

    lq: torch.Tensor
    gt_only_downsample: torch.Tensor
    gt: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- kernels
def _grid(size: int) -> np.ndarray:
    ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)  # (size, size, 2), (x, y)


def _sigma_matrix(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rot @ np.diag([sig_x**2, sig_y**2]) @ rot.T


def bivariate_kernel(
    kind: str, size: int, sig_x: float, sig_y: float, theta: float, beta: float = 1.0
) -> np.ndarray:
    """Normalised ``(size, size)`` kernel. ``kind``: ``"gaussian"`` exp(-q/2), ``"generalized"``
    exp(-q^beta / 2) or ``"plateau"`` 1 / (q^beta + 1), with ``q = x^T Sigma^-1 x`` and
    ``Sigma = R(theta) diag(sig_x^2, sig_y^2) R(theta)^T``."""
    inv = np.linalg.inv(_sigma_matrix(sig_x, sig_y, theta))
    g = _grid(size)
    q = np.sum((g @ inv) * g, axis=2)
    if kind == "gaussian":
        k = np.exp(-0.5 * q)
    elif kind == "generalized":
        k = np.exp(-0.5 * np.power(q, beta))
    elif kind == "plateau":
        k = 1.0 / (np.power(q, beta) + 1.0)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    return k / k.sum()


def circular_lowpass_kernel(cutoff: float, size: int, pad_to: int = 0) -> np.ndarray:
    """2-D sinc (ideal circular low-pass) kernel, normalised, optionally zero-padded to ``pad_to``."""
    c = (size - 1) / 2
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    r = np.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1 / (2 * np.pi * r)
    k[(size - 1) // 2, (size - 1) // 2] = cutoff**2 / (4 * np.pi)
    k = k / k.sum()
    if pad_to > size:
        p = (pad_to - size) // 2
        k = np.pad(k, ((p, p), (p, p)))
    return k


def _beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # The official draw: U[lo, 1) or U[1, hi) with p 0.5 each; for hi < 1 the second is U(hi, 1].
    if rng.uniform() < 0.5:
        lo, hi = beta_range[0], 1.0
    else:
        lo, hi = 1.0, beta_range[1]
    return float(lo + (hi - lo) * rng.uniform())


def random_mixed_kernel(rng: np.random.Generator, size: int, cfg: WeakDegradationConfig) -> tuple[np.ndarray, dict]:
    """One random blur kernel of the basicsr "mixed kernels" family, with its parameters."""
    kind = str(rng.choice(list(cfg.kernel_list), p=np.asarray(cfg.kernel_prob) / np.sum(cfg.kernel_prob)))
    lo, hi = cfg.blur_sigma
    sig_x = float(rng.uniform(lo, hi))
    iso = kind.endswith("_iso") or kind == "iso"
    if iso:
        sig_y, theta = sig_x, 0.0
    else:
        sig_y = float(rng.uniform(lo, hi))
        theta = float(rng.uniform(-math.pi, math.pi))
    sig_x, sig_y = max(sig_x, 1e-6), max(sig_y, 1e-6)  # U[0, .) can return exactly 0
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _beta(rng, cfg.betag_range)
        k = bivariate_kernel("generalized", size, sig_x, sig_y, theta, beta)
    elif kind.startswith("plateau"):
        beta = _beta(rng, cfg.betap_range)
        k = bivariate_kernel("plateau", size, sig_x, sig_y, theta, beta)
    else:
        k = bivariate_kernel("gaussian", size, sig_x, sig_y, theta)
    return k, {"type": kind, "sigma_x": sig_x, "sigma_y": sig_y, "theta": theta, "beta": beta}


# ----------------------------------------------------------------------------- operations
def _batched(img: torch.Tensor) -> torch.Tensor:
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"expected an image tensor (3, H, W) or (1, 3, H, W), got {tuple(img.shape)}")
    return img.float()


def filter2d(img: torch.Tensor, kernel: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Filter ``(B, C, H, W)`` with an odd ``(k, k)`` kernel, reflect padding (basicsr ``filter2D``)."""
    kernel = torch.as_tensor(kernel, dtype=img.dtype, device=img.device)
    k = kernel.shape[-1]
    b, c, h, w = img.shape
    x = F.pad(img, (k // 2,) * 4, mode="reflect").reshape(b * c, 1, h + k - 1, w + k - 1)
    return F.conv2d(x, kernel.view(1, 1, k, k)).view(b, c, h, w)


def jpeg_compress(img: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip of ``(B, 3, H, W)`` in [0, 1] with Pillow (4:2:0, ``round(quality)``)."""
    out = []
    for im in img.clamp(0, 1):
        arr = (im.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(round(quality)), subsampling=2)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(img.device, img.dtype)


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return 0.2989 * r + 0.587 * g + 0.114 * b


def add_gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """``img + N(0, (sigma/255)^2)`` (one channel repeated if ``gray``), clamped to [0, 1]."""
    b, c, h, w = img.shape
    if gray:
        noise = torch.randn((b, 1, h, w), generator=generator).expand(b, c, h, w)
    else:
        noise = torch.randn((b, c, h, w), generator=generator)
    return (img + noise.to(img) * sigma / 255.0).clamp(0, 1)


def _poisson_noise(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    img = torch.clamp((img * 255.0).round(), 0, 255) / 255.0
    vals = torch.tensor(
        [2 ** math.ceil(math.log2(len(torch.unique(im)))) for im in img], dtype=img.dtype
    ).view(-1, 1, 1, 1)
    return torch.poisson(img * vals, generator=generator) / vals - img


def add_poisson_noise(img: torch.Tensor, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """basicsr Poisson noise: the image is quantised to 8 bits, its number of distinct values ``v``
    rounded up to a power of two, ``noise = Poisson(img * v) / v - img`` (on the gray image if
    ``gray``), times ``scale``; result clamped to [0, 1]."""
    b, c, h, w = img.shape
    if gray:
        noise = _poisson_noise(_gray(img), generator).expand(b, c, h, w)
    else:
        noise = _poisson_noise(img, generator)
    return (img + noise * scale).clamp(0, 1)


def _resize(img: torch.Tensor, mode: str, size=None, scale=None) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(img, size=size, scale_factor=scale, mode="area")
    return F.interpolate(img, size=size, scale_factor=scale, mode=mode, align_corners=False)


def gt_only_downsample(gt: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Resize ``gt`` ``(B, 3, H, W)`` to ``(int(H // scale), int(W // scale))`` and back with the same
    mode (no clamping, no quantisation: as the official code)."""
    gt = _batched(gt)
    h, w = gt.shape[-2:]
    small = _resize(gt, mode, size=(int(h // scale), int(w // scale)))
    return _resize(small, mode, size=(h, w))


def random_augment(img: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """basicsr ``augment(hflip=True, rotation=True)``: horizontal flip, vertical flip and transpose,
    each with p = 0.5, in that order."""
    img = _batched(img)
    hflip, vflip, transpose = (bool(rng.uniform() < 0.5) for _ in range(3))
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if transpose:
        img = img.transpose(-1, -2)
    return img.contiguous(), {"hflip": hflip, "vflip": vflip, "transpose": transpose}


class WeakDegradation:
    """The weak degradation used for A-FINE's enhancer inputs and training conditions.

    ``__call__(gt, rng, augment=False)`` runs: blur with a random kernel -> random resize -> Gaussian
    or Poisson noise -> JPEG(75-95) -> one of [resize to H/s -> sinc -> JPEG(90-95)] or
    [JPEG(90-95) -> resize to H/s -> sinc] -> resize back to (H, W) -> 8-bit quantisation, with
    ``s ~ U[1, 1.5]``; plus the GT-only down/up blur by the same ``s``.
    """

    def __init__(self, config: WeakDegradationConfig | None = None):
        self.config = config or WeakDegradationConfig()

    def sample_kernels(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(blur kernel, final sinc kernel)``, both padded to the largest kernel size, and params."""
        cfg = self.config
        kmax = max(cfg.kernel_sizes)
        size = int(rng.choice(list(cfg.kernel_sizes)))
        if rng.uniform() < cfg.sinc_prob:
            # official threshold for kernels in [3, 9]: omega in [pi/3, pi] below size 9, else [pi/5, pi]
            omega = float(rng.uniform(math.pi / 3, math.pi) if size < 9 else rng.uniform(math.pi / 5, math.pi))
            kernel = circular_lowpass_kernel(omega, size)
            kinfo = {"type": "sinc", "omega": omega}
        else:
            kernel, kinfo = random_mixed_kernel(rng, size, cfg)
        p = (kmax - size) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
        kinfo["size"] = size
        if rng.uniform() < cfg.final_sinc_prob:
            fsize = int(rng.choice(list(cfg.final_sinc_sizes)))
            omega = float(rng.uniform(math.pi / 3, math.pi))
            sinc = circular_lowpass_kernel(omega, fsize, pad_to=kmax)
            sinfo = {"size": fsize, "omega": omega}
        else:
            sinc = np.zeros((kmax, kmax))
            sinc[kmax // 2, kmax // 2] = 1.0
            sinfo = None
        return kernel, sinc, {"kernel": kinfo, "final_sinc": sinfo}

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor, rng: np.random.Generator, augment: bool = False) -> DegradationResult:
        cfg = self.config
        gt = _batched(gt).clamp(0, 1)
        params: dict[str, Any] = {}
        if augment:
            gt, params["augment"] = random_augment(gt, rng)
        kernel, sinc, params["kernels"] = self.sample_kernels(rng)
        torch_gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        h, w = gt.shape[-2:]
        s = float(rng.uniform(*cfg.scale_range))
        params["scale_final"] = s

        # stage 1: blur, resize, noise, JPEG
        out = filter2d(gt, kernel)
        kind = ["up", "down", "keep"][int(rng.choice(3, p=np.asarray(cfg.resize_prob) / np.sum(cfg.resize_prob)))]
        scale = {"up": lambda: float(rng.uniform(1, cfg.resize_range[1])),
                 "down": lambda: float(rng.uniform(cfg.resize_range[0], 1)),
                 "keep": lambda: 1.0}[kind]()
        mode = str(rng.choice(RESIZE_MODES))
        out = _resize(out, mode, scale=scale)
        params["resize1"] = {"type": kind, "scale": scale, "mode": mode}
        gray = bool(rng.uniform() < cfg.gray_noise_prob)
        if rng.uniform() < cfg.gaussian_noise_prob:
            sigma = float(rng.uniform(*cfg.noise_range))
            out = add_gaussian_noise(out, sigma, gray, torch_gen)
            params["noise"] = {"type": "gaussian", "sigma": sigma, "gray": gray}
        else:
            pscale = float(rng.uniform(*cfg.poisson_scale_range))
            out = add_poisson_noise(out, pscale, gray, torch_gen)
            params["noise"] = {"type": "poisson", "scale": pscale, "gray": gray}
        q1 = float(rng.uniform(*cfg.jpeg_range))
        out = jpeg_compress(out.clamp(0, 1), q1)
        params["jpeg1"] = q1

        # final stage: the two orders of [resize to H/s + sinc] and JPEG
        small = (int(h // s), int(w // s))
        q2 = float(rng.uniform(*cfg.final_jpeg_range))
        mode2 = str(rng.choice(RESIZE_MODES))
        if rng.uniform() < cfg.final_order_prob:
            out = filter2d(_resize(out, mode2, size=small), sinc)
            out = jpeg_compress(out.clamp(0, 1), q2)
            order = "resize_sinc_jpeg"
        else:
            out = jpeg_compress(out.clamp(0, 1), q2)
            out = filter2d(_resize(out, mode2, size=small), sinc)
            order = "jpeg_resize_sinc"
        params["final"] = {"order": order, "jpeg": q2, "mode": mode2, "size": list(small)}

        mode3 = str(rng.choice(RESIZE_MODES))
        out = _resize(out, mode3, size=(h, w))
        lq = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
        params["resize_back_mode"] = mode3

        mode4 = str(rng.choice(RESIZE_MODES))
        gt_blur = gt_only_downsample(gt, s, mode4)
        params["gt_only_downsample_mode"] = mode4
        return DegradationResult(lq=lq, gt_only_downsample=gt_blur, gt=gt, params=params)

    def to_dict(self) -> dict:
        return asdict(self.config)
