"""Training data of the diffusion enhancer (spec/enhancer.md §4.3).

Per item: load an image, (FFHQ only) resize to a random square, bring the short side up to the
resolution, take a random square crop, then run the weak degradation with flip/rotation augmentation.
The condition image is, with p 0.5 each, the weakly degraded LQ or the GT blurred by a down/up resize;
the caption is always empty.

Randomness: every item draws a seed from torch's RNG (seeded per process / data-loader worker by
accelerate and PyTorch), so a run with ``--seed`` is reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from pipelines.degradations import WeakDegradation

__all__ = ["EnhancerTrainDataset", "list_training_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_training_images(folders: Sequence[str | os.PathLike]) -> list[Path]:
    """All image files in ``folders`` (recursively), sorted."""
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"training image folder not found: {folder}")
        files += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return files


class EnhancerTrainDataset(torch.utils.data.Dataset):
    """Items: ``pixel_values`` (3, R, R) in [-1, 1] (the augmented GT), ``conditioning_pixel_values``
    (3, R, R) in [0, 1] (LQ or GT-only blur), ``input_ids`` (77,) of the empty caption."""

    def __init__(
        self,
        folders: Sequence[str | os.PathLike],
        tokenizer,
        resolution: int = 512,
        gt_condition_prob: float = 0.5,
        ffhq_extra: int = 200,
        degradation: WeakDegradation | None = None,
    ):
        self.files = list_training_images(folders)
        if not self.files:
            raise ValueError(f"no training images in {', '.join(map(str, folders))}")
        self.resolution = resolution
        self.gt_condition_prob = gt_condition_prob
        self.ffhq_extra = ffhq_extra
        self.degradation = degradation or WeakDegradation()
        self.input_ids = tokenizer(
            "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids[0]

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> Image.Image:
        from modeling_afine.image_io import load_image

        return load_image(path)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        path = self.files[index]
        image = self._load(path)
        res = self.resolution
        if "ffhq" in str(path).lower():
            # official: FFHQ faces are first resized to a random square of 512..712 px
            s = int(rng.integers(res, res + self.ffhq_extra + 1))
            image = image.resize((s, s))
        w, h = image.size
        if min(w, h) < res:
            scale = res / min(w, h)
            image = image.resize((max(res, round(w * scale)), max(res, round(h * scale))))
            w, h = image.size
        top = int(rng.integers(0, h - res + 1))
        left = int(rng.integers(0, w - res + 1))
        crop = np.asarray(image, dtype=np.float32)[top : top + res, left : left + res] / 255.0
        gt = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        result = self.degradation(gt, rng, augment=True)
        use_gt = rng.uniform() < self.gt_condition_prob
        cond = result.gt_only_downsample if use_gt else result.lq
        return {
            "pixel_values": result.gt[0] * 2.0 - 1.0,
            "conditioning_pixel_values": cond[0],
            "input_ids": self.input_ids.clone(),
        }


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([e[k] for e in examples]).contiguous() for k in examples[0]}
