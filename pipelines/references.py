"""Reference selection and cropping for DiffIQA (spec/enhancer.md §5), without OpenCV.

* :func:`texture_stats` — ``(std, laplacian_var)`` of the 8-bit gray image: the population standard
  deviation of the gray values (the official code calls it "var"; it is ``cv2.meanStdDev``) and the
  variance of the 3x3 Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]`` with reflect-101 borders, *saturated
  to uint8* (``cv2.Laplacian(gray, cv2.CV_8U)``: negative responses become 0, large ones 255). The
  saturation is an odd choice of the official code, reproduced so that selections match.
* :func:`select_references` keeps images with ``std >= 60`` and ``laplacian_var >= 60``.
* :func:`grid_crops` cuts 512x512 crops on a jittered stride-384 grid and keeps those inside the
  image (strict inequality, as the official code) whose stats pass 50/50; names ``{stem}x{row}y{col}``.

Gray conversion is Pillow's ``convert("L")`` (ITU-R 601-2 luma, integer), as the official scripts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

__all__ = ["texture_stats", "passes", "select_references", "grid_crops", "CropBox", "crop_start_jitter"]


def _laplacian_u8(gray: np.ndarray) -> np.ndarray:
    g = np.pad(gray.astype(np.int32), 1, mode="reflect")  # reflect-101 = OpenCV's default border
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return np.clip(lap, 0, 255).astype(np.uint8)


def texture_stats(image: Image.Image) -> tuple[float, float]:
    """``(std of the gray values, variance of the uint8-saturated Laplacian)`` of ``image``."""
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    return float(gray.astype(np.float64).std()), float(_laplacian_u8(gray).astype(np.float64).var())


def passes(image: Image.Image, min_std: float, min_laplacian_var: float) -> bool:
    std, lap = texture_stats(image)
    return std >= min_std and lap >= min_laplacian_var


def select_references(
    files: list[Path], min_std: float = 60.0, min_laplacian_var: float = 60.0, load_image=None
) -> Iterator[tuple[Path, bool, tuple[float, float] | None, str | None]]:
    """For each file yield ``(file, kept, (std, laplacian_var) or None, error or None)``."""
    if load_image is None:
        from modeling_afine.image_io import load_image
    for f in files:
        try:
            img = load_image(f)
        except Exception as err:  # noqa: BLE001 - the loader names the file
            yield f, False, None, str(err)
            continue
        std, lap = texture_stats(img)
        yield f, std >= min_std and lap >= min_laplacian_var, (std, lap), None


@dataclass(frozen=True)
class CropBox:
    row: int  # top (y) of the crop
    col: int  # left (x)
    size: int

    @property
    def name_suffix(self) -> str:
        return f"x{self.row}y{self.col}"


def crop_start_jitter(side: int) -> int:
    """Upper bound ``k`` of the start offset U{0..k} along an axis of length ``side``."""
    return 16 if side < 1200 else 32 if side < 2400 else 64


def grid_crops(
    height: int, width: int, rng: random.Random, size: int = 512, stride: int = 384, jitter: int = 16
) -> list[CropBox]:
    """Jittered grid crop boxes that lie fully inside the image (``x + size < side``, strict)."""
    start_y = rng.randint(0, crop_start_jitter(height))
    start_x = rng.randint(0, crop_start_jitter(width))
    boxes = []
    for y in range(start_y, height, stride):
        for x in range(start_x, width, stride):
            yy = max(0, y + rng.randint(-jitter, jitter))
            xx = max(0, x + rng.randint(-jitter, jitter))
            if yy + size < height and xx + size < width:
                boxes.append(CropBox(yy, xx, size))
    return boxes


def crop_image(
    image: Image.Image, stem: str, rng: random.Random, size: int = 512, stride: int = 384,
    min_std: float = 50.0, min_laplacian_var: float = 50.0,
) -> list[tuple[str, Image.Image, tuple[float, float]]]:
    """Crops of ``image`` that pass the texture test: ``[(name, crop, stats)]`` with
    ``name = f"{stem}x{row}y{col}"``."""
    w, h = image.size
    out = []
    for box in grid_crops(h, w, rng, size, stride):
        crop = image.crop((box.col, box.row, box.col + size, box.row + size))
        stats = texture_stats(crop)
        if stats[0] >= min_std and stats[1] >= min_laplacian_var:
            out.append((f"{stem}{box.name_suffix}", crop, stats))
    return out

