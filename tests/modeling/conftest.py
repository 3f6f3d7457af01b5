"""Tiny A-FINE models and images built once per test session (nothing downloaded or committed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from .reference_afine import random_official_checkpoint

HEADS = 2  # width 128 // 64, the OpenAI rule used by the converter


@pytest.fixture(scope="session")
def official_parts():
    return random_official_checkpoint(seed=0)


@pytest.fixture(scope="session")
def official_pth(tmp_path_factory, official_parts):
    path = tmp_path_factory.mktemp("official") / "afine.pth"
    torch.save(official_parts, path)
    return path


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory, official_pth):
    from modeling_afine.convert_afine_checkpoint import convert_afine_checkpoint

    return convert_afine_checkpoint(official_pth, tmp_path_factory.mktemp("converted") / "afine-tiny")


@pytest.fixture(scope="session")
def model(converted_dir):
    from modeling_afine import AfineModel

    return AfineModel.from_pretrained(converted_dir).eval()


@pytest.fixture(scope="session")
def processor(converted_dir):
    from modeling_afine import AfineImageProcessor

    return AfineImageProcessor.from_pretrained(converted_dir)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


def degrade(img: np.ndarray, factor: int = 4, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Bicubic down/up-sampling plus optional Gaussian noise: a typical SR-style distortion."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img).resize((max(1, w // factor), max(1, h // factor)), Image.BICUBIC)
    out = np.asarray(pil.resize((w, h), Image.BICUBIC)).astype(np.float64)
    if noise:
        out += np.random.default_rng(seed).normal(0, noise, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def photos():
    """Real public-domain photographs from scikit-image, cropped to assorted sizes (H, W, 3) uint8."""
    return {
        "astronaut_224": _photo("astronaut")[100:324, 150:374],
        "coffee_70x100": _photo("coffee")[50:120, 200:300],
        "chelsea_96x160": _photo("chelsea")[60:156, 120:280],
        "rocket_130x75": _photo("rocket")[100:230, 300:375],
    }
