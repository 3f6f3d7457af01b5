"""Image processor for A-FINE: the official preprocessing, batched, for any input type.

Steps (spec/afine.md §1.1): 8-bit RGB -> float /255 -> CLIP normalisation -> if a side is not a multiple
of 32, bicubic *stretch* (not pad) of the normalised tensor up to the next multiple, with the target taken
from the **distorted** image and applied to both images. No torchvision.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .configuration_afine import CLIP_MEAN, CLIP_STD
from .image_io import ImageLoadError, format_size, load_image, probe_image, to_rgb8
from .modeling_afine import stretch_to_multiple, target_size

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

__all__ = [
    "AfineImageProcessor",
    "image_to_tensor",
    "size_mismatch_message",
    "check_score_budget",
    "max_score_pixels",
    "DEFAULT_MAX_SCORE_PIXELS",
    "MAX_SCORE_PIXELS_ENV",
]


def size_mismatch_message(
    distorted: str, distorted_hw: Sequence[int], reference: str, reference_hw: Sequence[int], fix: str
) -> str:
    """One-line error for a (distorted, reference) pair of different sizes, naming both; sizes ``WxH``.

    ``distorted_hw`` / ``reference_hw`` are ``(H, W)`` as in tensor shapes.
    """
    return (
        f"{distorted}: size mismatch: the distorted image is {format_size(distorted_hw[1], distorted_hw[0])} but "
        f"its reference {reference} is {format_size(reference_hw[1], reference_hw[0])}; A-FINE compares images of "
        f"the same size ({fix})"
    )


def _drop_or_replicate_channels(chw: torch.Tensor, name: str) -> torch.Tensor:
    channels = chw.shape[0]
    if channels == 3:
        return chw
    if channels == 1:
        return chw.expand(3, -1, -1)
    if channels == 2:  # gray + alpha
        return chw[:1].expand(3, -1, -1)
    if channels == 4:  # RGBA: alpha dropped, not composited (as OpenCV's IMREAD_COLOR)
        return chw[:3]
    raise ValueError(f"{name}: expected 1, 2, 3 or 4 channels, got {channels}")


#: Images with more pixels than this are not turned into model inputs. A-FINE runs its ViT at native
#: resolution: attention time grows with the square of the pixel count and the model's pixel-level terms
#: need about 100 bytes per pixel, so an image at the loader's limit (2**28 pixels) would need ~27 GB and
#: hours to days of CPU time. 2**24 (16.8 MP) admits 4K UHD / DCI 4K frames and 16-MP photos; it refuses
#: 8K and larger. Override with ``AFINE_MAX_SCORE_PIXELS`` (read at every call; 0 = no budget). The
#: loader's own limit (``AFINE_MAX_IMAGE_PIXELS``, 2**28) still applies to every file.
DEFAULT_MAX_SCORE_PIXELS = 2**24
MAX_SCORE_PIXELS_ENV = "AFINE_MAX_SCORE_PIXELS"


def max_score_pixels() -> int:
    """The scoring budget in force (pixels; 0 = none): ``$AFINE_MAX_SCORE_PIXELS`` or 2**24."""
    raw = os.environ.get(MAX_SCORE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SCORE_PIXELS
    try:
        return max(0, int(raw, 0))
    except ValueError:
        raise ValueError(f"{MAX_SCORE_PIXELS_ENV}={raw!r} is not a whole number of pixels (0 = no budget)") from None


def check_score_budget(height: int, width: int, name: str, multiple: int = 32) -> None:
    """Raise :class:`ImageLoadError` naming ``name`` if a ``height x width`` image, once stretched to multiples
    of ``multiple`` (what the model processes: a 1-pixel-wide image costs 32 columns), is over the budget."""
    budget = max_score_pixels()
    if not budget:
        return
    h32, w32 = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    if h32 * w32 > budget:
        stretched = "" if (h32, w32) == (height, width) else f", stretched to {format_size(w32, h32)},"
        raise ImageLoadError(
            f"{name}: image is {format_size(width, height)}{stretched} = {h32 * w32:,} pixels, over the scoring budget "
            f"of {budget:,} pixels (A-FINE runs at native resolution, {h32 * w32 // multiple**2:,} ViT patches here; "
            f"the cost grows with the square of that): set {MAX_SCORE_PIXELS_ENV} to a larger number (0 = no "
            "budget) to score it anyway"
        )


def _nonempty(chw: torch.Tensor, name: str) -> torch.Tensor:
    if chw.shape[-1] == 0 or chw.shape[-2] == 0:
        raise ValueError(f"{name}: image has no pixels ({format_size(chw.shape[-1], chw.shape[-2])})")
    return chw


def image_to_tensor(image: ImageLike, name: str = "image") -> torch.Tensor:
    """Convert one image to a float32 RGB tensor ``[3, H, W]`` with values in [0, 1].

    Accepts a path, a PIL image, a numpy array ``(H, W)`` / ``(H, W, C)`` (uint8, uint16 or float in [0, 1])
    or a torch tensor ``(C, H, W)`` / ``(H, W)`` (uint8, or float in [0, 1]). 16-bit data keeps its high
    byte (as OpenCV did in the official pipeline); grayscale is replicated and alpha dropped. A float tensor
    keeps its autograd graph (it is not detached), so gradients reach it through the processor; it is moved to
    the CPU like every other input (for training on a GPU use :class:`~modeling_afine.AfineLoss`, which does
    the same preprocessing on the tensor's own device).

    Raises :class:`ImageLoadError` (naming the file) for unreadable files and for images over the scoring
    budget (:data:`DEFAULT_MAX_SCORE_PIXELS`; a file's size is read from its header before decoding).
    """
    if isinstance(image, (str, os.PathLike)):
        check_score_budget(*probe_image(image), name=os.fspath(image))
        arr = np.asarray(load_image(image), dtype=np.float32)
        arr /= 255.0  # in place: the same float32 division as ``arr / 255.0``, one copy less
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if isinstance(image, Image.Image):
        check_score_budget(image.size[1], image.size[0], name)
        try:
            rgb = to_rgb8(image, name)
        except (OSError, SyntaxError, EOFError) as exc:  # a lazily opened PIL image whose data is bad
            raise ImageLoadError(f"{name}: cannot decode image: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
        return _nonempty(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), name)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"{name}: numpy images must be (H, W) or (H, W, C), got shape {image.shape}")
        if arr.shape[2] not in (1, 2, 3, 4) and arr.shape[0] in (1, 3, 4):
            raise ValueError(f"{name}: numpy images must be channels-last (H, W, C), got shape {image.shape}")
        check_score_budget(arr.shape[0], arr.shape[1], name)
        if arr.dtype == np.uint8:
            data = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            data = (arr >> 8).astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            data = arr.astype(np.float32)
        else:
            raise ValueError(f"{name}: unsupported numpy dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
        tensor = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)
        return _nonempty(_drop_or_replicate_channels(tensor, name).contiguous(), name)
    if isinstance(image, torch.Tensor):
        # No detach: a float tensor that requires grad keeps its graph through the processor (loss use).
        t = image
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"{name}: tensors must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        check_score_budget(t.shape[-2], t.shape[-1], name)
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif t.is_floating_point():
            t = t.float()
        else:
            raise ValueError(f"{name}: unsupported tensor dtype {t.dtype} (use uint8 or float in [0, 1])")
        return _nonempty(_drop_or_replicate_channels(t.cpu(), name).contiguous(), name)
    raise TypeError(f"{name}: unsupported image type {type(image).__name__} (path, PIL, numpy HWC or torch CHW)")


def _as_list(images: Any, what: str) -> list:
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{what}: empty list of images")
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def _label(what: str, index: int, image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"{what}[{index}]"


class AfineImageProcessor(BaseImageProcessor):
    r"""Prepares (distorted, reference) images for :class:`AfineModel`.

    ``processor(distorted, reference)`` returns a :class:`BatchFeature` with ``distorted`` and ``reference``
    float32 tensors ``[B, 3, H', W']`` (CLIP-normalised, H' and W' multiples of 32), ready for
    ``model(**inputs)``. Without ``reference`` only ``distorted`` is returned (for ``model.naturalness``).
    Tensor inputs that require grad keep their graph: ``model(**processor(x, y)).score.sum().backward()``
    fills ``x.grad``. :class:`AfineModel` itself expects these *normalised* tensors and cannot tell raw [0, 1]
    images from normalised ones (both are valid inputs numerically), so never feed it unnormalised tensors;
    :class:`~modeling_afine.AfineLoss` and :class:`~modeling_afine.AfineMetric` take raw images and normalise
    inside the graph.

    Args:
        image_mean, image_std: normalisation constants (OpenAI CLIP).
        size_multiple: sides are stretched up to a multiple of this (32).
        resize_reference: if True, a reference whose size differs from its distorted image is bicubic-
            resized to the distorted image's target size; if False (default) such a pair is an error.
    """

    model_input_names = ["distorted", "reference"]

    def __init__(
        self,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        size_multiple: int = 32,
        resize_reference: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        auto_map = kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        if auto_map:
            self.auto_map = auto_map
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.size_multiple = int(size_multiple)
        self.resize_reference = bool(resize_reference)

    @classmethod
    def for_config(cls, config: Any) -> "AfineImageProcessor":
        """The processor matching a model's :class:`AfineConfig` (its normalisation and size multiple)."""
        return cls(image_mean=config.image_mean, image_std=config.image_std, size_multiple=config.size_multiple)

    # the base class' attribute bookkeeping is not used by this processor
    _valid_kwargs_names: list[str] = []

    def normalize_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP normalisation of ``[..., 3, H, W]`` float images in [0, 1]; returns a new tensor."""
        mean = torch.tensor(self.image_mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image - mean) / std

    def _load_batch(self, images: Any, what: str) -> list[torch.Tensor]:
        out = []
        for i, image in enumerate(_as_list(images, what)):
            name = _label(what, i, image)
            try:
                out.append(self.normalize_tensor(image_to_tensor(image, name)))
            except ImageLoadError:
                raise
            except (TypeError, ValueError) as exc:
                raise type(exc)(str(exc) if name in str(exc) else f"{name}: {exc}") from exc
        return out

    def preprocess_images(self, images: Any) -> torch.Tensor:
        """Images of one size -> normalised, stretched ``[B, 3, H', W']`` float32 tensor."""
        tensors = self._load_batch(images, "images")
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got {sorted(sizes)}; process them separately "
                "(AfineScorer groups by size automatically)"
            )
        batch = torch.stack(tensors)
        return stretch_to_multiple(batch, self.size_multiple)

    def __call__(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Same as :meth:`preprocess`: ``processor(distorted, reference)``."""
        return self.preprocess(*args, **kwargs)

    def preprocess(
        self,
        distorted: Any = None,
        reference: Any = None,
        *,
        images: Any = None,
        resize_reference: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """See the class docstring. ``images=`` is an alias of ``distorted`` for the no-reference path."""
        if distorted is None:
            distorted = images
        if distorted is None:
            raise ValueError("no images given: call processor(distorted, reference)")
        if return_tensors not in ("pt", None):
            raise ValueError(f"AfineImageProcessor only returns torch tensors, got return_tensors={return_tensors!r}")
        resize_reference = self.resize_reference if resize_reference is None else bool(resize_reference)
        dis_inputs = _as_list(distorted, "distorted")
        dis = self._load_batch(dis_inputs, "distorted")
        dis_sizes = [tuple(t.shape[-2:]) for t in dis]
        if len(set(dis_sizes)) > 1:
            raise ValueError(
                f"distorted images in one batch must share a size, got {sorted(set(dis_sizes))}; "
                "process them separately (AfineScorer groups by size automatically)"
            )
        size = target_size(*dis_sizes[0], self.size_multiple)
        data = {"distorted": stretch_to_multiple(torch.stack(dis), self.size_multiple, size=size)}
        if reference is not None:
            ref_inputs = _as_list(reference, "reference")
            refs = self._load_batch(ref_inputs, "reference")
            if len(refs) not in (1, len(dis)):
                raise ValueError(f"got {len(dis)} distorted images but {len(refs)} references (need 1 or {len(dis)})")
            stretched = []
            for i, ref in enumerate(refs):
                ref_size = tuple(ref.shape[-2:])
                if ref_size != dis_sizes[0]:
                    if not resize_reference:
                        j = i if len(refs) == len(dis) else 0
                        raise ValueError(
                            size_mismatch_message(
                                _label("distorted", j, dis_inputs[j]),
                                dis_sizes[j],
                                _label("reference", i, ref_inputs[i]),
                                ref_size,
                                "pass resize_reference=True to stretch the reference",
                            )
                        )
                stretched.append(stretch_to_multiple(ref[None], self.size_multiple, size=size)[0])
            data["reference"] = torch.stack(stretched)
        return BatchFeature(data=data, tensor_type=None)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "image_processor_type": type(self).__name__,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "size_multiple": self.size_multiple,
            "resize_reference": self.resize_reference,
        }
        auto_map = getattr(self, "auto_map", None)
        if auto_map:
            out["auto_map"] = auto_map
        return out
