"""Tiny converted A-FINE model, scorer and PNG images for the spaces tests (built once, nothing downloaded)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from modeling_afine.convert_afine_checkpoint import convert_afine_checkpoint
    from tests.modeling.reference_afine import random_official_checkpoint

    pth = tmp_path_factory.mktemp("spaces_official") / "afine.pth"
    torch.save(random_official_checkpoint(seed=0), pth)
    return convert_afine_checkpoint(pth, tmp_path_factory.mktemp("spaces_converted") / "afine-tiny")


@pytest.fixture(scope="session")
def scorer(tiny_model_dir):
    from modeling_afine.scoring import AfineScorer

    return AfineScorer(str(tiny_model_dir), device="cpu", batch_size=2)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour pattern plus seeded noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(xx / (5 + c) + yy / (7 + 2 * c) + seed) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def pngs(tmp_path_factory):
    """Paths: ref (64x64), two distortions of it, a second pair, and an odd-size image (48x80)."""
    d = tmp_path_factory.mktemp("spaces_pngs")
    ref = textured(64, 64, 1)
    ref2 = textured(64, 96, 2)
    arrays = {
        "ref": ref,
        "mild": noisy(ref, 8, 10),
        "strong": noisy(ref, 60, 11),
        "ref2": ref2,
        "dis2": noisy(ref2, 25, 12),
        "odd": textured(48, 80, 3),
    }
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(arr).save(paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
