"""The one image loader of the project.

Every part (model, processor, CLI, dataset builders, training, apps) reads user and dataset images
through :func:`load_image`, so the rules below hold everywhere:

* the result is an 8-bit RGB ``PIL.Image.Image`` (mode ``"RGB"``);
* EXIF orientation is applied (as OpenCV's ``imread`` did in the official pipeline);
* grayscale is replicated to three channels, alpha is dropped (not composited), palettes expanded;
* 16-bit images are reduced to 8 bits by keeping the high byte (``v >> 8``), which is what
  ``cv2.imread(path, cv2.IMREAD_COLOR)`` does in the official code; Pillow's own ``convert`` would
  saturate them at 255 instead;
* images with more than ``max_pixels`` pixels are refused before decoding (decompression bombs);
* every failure raises :class:`ImageLoadError` naming the file and the problem.

This module imports only Pillow and numpy so that data tools can use it cheaply.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "load_image", "load_image_array", "to_rgb8", "DEFAULT_MAX_PIXELS"]

#: Default pixel limit (width * height). 2**28 is about 16k x 16k; override with the
#: ``AFINE_MAX_IMAGE_PIXELS`` environment variable or the ``max_pixels`` argument.
DEFAULT_MAX_PIXELS = int(os.environ.get("AFINE_MAX_IMAGE_PIXELS", 2**28))

PathLike = Union[str, os.PathLike]


class ImageLoadError(ValueError):
    """An image could not be read. The message names the file and the problem."""


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "filename", None)
    return str(name) if name else f"<{type(source).__name__}>"


def to_rgb8(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert an already opened PIL image to 8-bit RGB with the project's rules (see module doc)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the high byte of 16-bit values like OpenCV.
        arr = np.asarray(image, dtype=np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr8 = arr.clip(0, 255).astype(np.uint8)  # an 8-bit image stored as mode I
        else:
            arr8 = (arr.clip(0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[..., None], 3, axis=2), mode="RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{name}: floating-point image contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr8 = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[..., None], 3, axis=2), mode="RGB")
    if mode in ("RGBA", "RGBX", "RGBa", "LA", "La", "PA", "P", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        # RGBA -> RGB drops alpha without compositing, as OpenCV's IMREAD_COLOR does.
        return image.convert("RGB")
    if mode.startswith("I;16") or mode.startswith("BGR"):
        return to_rgb8(image.convert("I"), name)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"{name}: unsupported image mode {mode!r}: {exc}") from exc


def load_image(
    source: Union[PathLike, bytes, Image.Image],
    *,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load ``source`` (a path, encoded bytes or a PIL image) as an 8-bit RGB PIL image.

    Args:
        source: file path, raw encoded bytes, or an open ``PIL.Image.Image``.
        max_pixels: refuse images with more pixels than this (default :data:`DEFAULT_MAX_PIXELS`).

    Returns:
        A fully decoded ``PIL.Image.Image`` of mode ``"RGB"``, EXIF orientation applied.

    Raises:
        ImageLoadError: missing, unreadable, truncated, empty or oversized images.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            fp: object = io.BytesIO(source)
        else:
            path = Path(source)
            if not path.exists():
                raise ImageLoadError(f"{name}: file does not exist")
            if path.is_dir():
                raise ImageLoadError(f"{name}: is a directory, not an image file")
            fp = path
        try:
            image = Image.open(fp)  # lazy: reads the header only
        except UnidentifiedImageError as exc:
            raise ImageLoadError(f"{name}: not a recognised image format (corrupt or not an image)") from exc
        except OSError as exc:
            raise ImageLoadError(f"{name}: cannot open: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageLoadError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(raise max_pixels or AFINE_MAX_IMAGE_PIXELS if this is intended)"
        )
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        # We enforce our own limit above; silence Pillow's second check for allowed large images.
        Image.MAX_IMAGE_PIXELS = None
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = f"file is truncated ({reason})"
        raise ImageLoadError(f"{name}: cannot decode image: {reason}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return to_rgb8(image, name)


def load_image_array(source: Union[PathLike, bytes, Image.Image], *, max_pixels: int | None = None) -> np.ndarray:
    """Like :func:`load_image` but returns a ``uint8`` numpy array of shape ``(H, W, 3)``, RGB."""
    return np.asarray(load_image(source, max_pixels=max_pixels), dtype=np.uint8)
