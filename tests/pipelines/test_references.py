"""Reference selection statistics and grid cropping (spec §5)."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from pipelines.references import crop_image, grid_crops, texture_stats


def _laplacian_reference(gray: np.ndarray) -> np.ndarray:
    """Independent per-pixel loop: 4-neighbour Laplacian, reflect-101 borders, saturated to [0, 255]."""
    h, w = gray.shape
    g = gray.astype(int)

    def at(y, x):
        y = -y if y < 0 else (2 * (h - 1) - y if y >= h else y)
        x = -x if x < 0 else (2 * (w - 1) - x if x >= w else x)
        return g[y, x]

    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            v = at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1) - 4 * at(y, x)
            out[y, x] = min(max(v, 0), 255)
    return out


def test_texture_stats_match_hand_computation():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    std, lap = texture_stats(img)
    gray = np.asarray(img.convert("L"))
    assert abs(std - gray.astype(float).std()) < 1e-9
    assert abs(lap - _laplacian_reference(gray).var()) < 1e-9
    flat = Image.new("RGB", (16, 16), (90, 90, 90))
    assert texture_stats(flat) == (0.0, 0.0)


def test_grid_crops_geometry_and_jitter():
    rng = random.Random(0)
    boxes = grid_crops(1000, 1300, rng)
    assert boxes
    for b in boxes:
        assert b.row >= 0 and b.col >= 0 and b.row + 512 < 1000 and b.col + 512 < 1300
    # rows near the stride-384 grid: start in [0, 16] (h < 1200) plus jitter in [-16, 16]
    assert all(abs(b.row - round(b.row / 384) * 384) <= 32 for b in boxes)
    assert grid_crops(500, 2000, random.Random(0)) == []  # no crop fits vertically (strict inequality)
    assert grid_crops(1000, 1300, random.Random(5)) == grid_crops(1000, 1300, random.Random(5))


def test_crop_image_names_and_texture_filter():
    rng = np.random.default_rng(1)
    textured = Image.fromarray(np.repeat(rng.integers(0, 256, (900, 900, 1), dtype=np.uint8), 3, axis=2))
    crops = crop_image(textured, "000001", random.Random(0))
    assert crops and all(c.size == (512, 512) for _, c, _ in crops)
    for name, crop, _ in crops:
        row, col = name[len("000001x"):].split("y")
        box = (int(col), int(row), int(col) + 512, int(row) + 512)
        assert np.array_equal(np.asarray(textured.crop(box)), np.asarray(crop))
    flat = Image.new("RGB", (900, 900), (128, 128, 128))
    assert crop_image(flat, "flat", random.Random(0)) == []
