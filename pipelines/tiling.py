"""Latent tiling for large inputs (the official scheme: tiles of ``tile_size`` latent px,
``overlap`` px overlap, Gaussian blending of the predicted noise)."""

from __future__ import annotations

import math

import torch

__all__ = ["tile_offsets", "gaussian_tile_weights", "needs_tiling"]


def needs_tiling(height: int, width: int, tile_size: int) -> bool:
    """The official criterion: tile when the latent *area* exceeds ``tile_size**2``."""
    return height * width > tile_size * tile_size


def tile_offsets(size: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of length ``size`` (``tile_size <= size``).

    Tile ``k`` starts at ``max(k * (tile_size - overlap), 0)``; tiles are added until they cover
    ``size``, and the last one is moved to end exactly at ``size``. E.g. size 128, tile 64, overlap 8
    gives ``[0, 56, 64]``.
    """
    if tile_size > size:
        raise ValueError(f"tile_size {tile_size} larger than the latent size {size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap}")
    offsets = []
    covered = 0
    k = 0
    while covered < size:
        offsets.append(max(k * tile_size - overlap * k, 0))
        covered = offsets[-1] + tile_size
        k += 1
    offsets[-1] = size - tile_size
    return offsets


def gaussian_tile_weights(tile_size: int, var: float = 0.01) -> torch.Tensor:
    """``(tile_size, tile_size)`` float64 weights ``outer(py, px)``.

    ``px[i] = exp(-(i - m)^2 / tile_size^2 / (2 var)) / sqrt(2 pi var)`` with ``m = (tile_size - 1) / 2``;
    ``py`` uses ``m = tile_size / 2`` (an asymmetry of the official code, kept as is).
    """
    idx = torch.arange(tile_size, dtype=torch.float64)

    def probs(mid: float) -> torch.Tensor:
        return torch.exp(-((idx - mid) ** 2) / (tile_size * tile_size) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(probs(tile_size / 2), probs((tile_size - 1) / 2))
