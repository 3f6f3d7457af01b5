"""Tiny A-FINE models and synthetic triplet data for the training tests (nothing downloaded or committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_CONFIG = dict(
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=32),
    natural_hidden_dim=8,
    natural_mlp_dim=16,
)


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_train(argv) -> int:
    from training.train_afine import main

    try:
        return main(list(argv))
    finally:
        reset_accelerate()


def tiny_model(seed: int = 0):
    from modeling_afine import AfineConfig, AfineModel

    torch.manual_seed(seed)
    return AfineModel(AfineConfig(**TINY_CONFIG)).eval()


def write_image(path: Path, size=(32, 32), seed: int = 0) -> None:
    """A smooth random image (so that the tiny CLIP sees structured content), size = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(path)


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> Path:
    from modeling_afine import AfineConfig

    path = tmp_path_factory.mktemp("cfg") / "afine_tiny.json"
    AfineConfig(**TINY_CONFIG).to_json_file(str(path))
    return path


@pytest.fixture(scope="session")
def triplet_txt(tmp_path_factory) -> tuple[Path, Path]:
    """An official-format Triplet.txt over 4 references x 3 variants; two reference groups are 32x32 and two
    64x32 (mixed sizes exercise the size grouping). Returns (txt, image folder)."""
    root = tmp_path_factory.mktemp("triplets")
    images = root / "images"
    lines = []
    seed = 0
    for r in range(4):
        size = (32, 32) if r < 2 else (64, 32)
        ref = f"ref{r}.png"
        seed += 1
        write_image(images / "Original" / ref, size, seed)
        names = []
        for v in range(3):
            name = f"ref{r}_{v:02d}.png"
            seed += 1
            write_image(images / f"{v:02d}" / name, size, seed)
            names.append(name)
        # the labels follow the variant index: 00 better than 01 better than 02, references best
        lines += [f"{names[0]},{names[1]},{ref},1,0,0", f"{names[2]},{names[1]},{ref},0,0,0",
                  f"{names[0]},{names[2]},{ref},1,0,0", f"{names[1]},{ref},{ref},0,0,0.5",
                  f"{names[1]},{names[0]},{ref},0.5,0.5,0"]
    txt = root / "Triplet.txt"
    txt.write_text("\n".join(lines) + "\n")
    return txt, images


@pytest.fixture(scope="session")
def stage1_dir(tmp_path_factory, tiny_config_file, triplet_txt) -> Path:
    """A finished 2-step stage-1 run (its final/ is the input of the stage-2 tests)."""
    txt, images = triplet_txt
    out = tmp_path_factory.mktemp("runs") / "stage1"
    rc = run_train(["--stage", "1", "--init", str(tiny_config_file), "--output-dir", str(out),
                    "--triplets", f"{txt}:{images}", "--max-steps", "2", "--per_device_train_batch_size", "4",
                    "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--use_cpu"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def converted_model(tmp_path_factory) -> Path:
    """A tiny model converted from a random checkpoint in the official afine.pth layout."""
    from modeling_afine.convert_afine_checkpoint import convert_afine_checkpoint
    from tests.modeling.reference_afine import random_official_checkpoint

    root = tmp_path_factory.mktemp("converted")
    torch.save(random_official_checkpoint(seed=1, text_tower=False), root / "afine.pth")
    return Path(convert_afine_checkpoint(root / "afine.pth", root / "afine-tiny"))


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_cache")
