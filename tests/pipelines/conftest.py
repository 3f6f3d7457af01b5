"""Tiny random enhancer components (spec/enhancer.md §6.3), built at test time, never downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet (256 printable characters), written out here."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer(folder) -> None:
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_components(tmp_dir, seed: int = 0) -> dict:
    """Return the components dict of a tiny random EnhancerPipeline."""
    from diffusers import AutoencoderKL, ControlNetModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pipelines.noising import make_inference_scheduler
    from pipelines.unet_paca import PASDUNet2DConditionModel

    torch.manual_seed(seed)
    unet = PASDUNet2DConditionModel(**TINY_UNET)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    # Fresh ControlNets output zeros (zero convolutions); give them random outputs so tests see
    # the control path.
    with torch.no_grad():
        for m in list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]:
            m.weight.normal_(0, 0.2)
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.2)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
    )
    tok_dir = tmp_dir / "tokenizer_src"
    write_tiny_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")
    for m in (unet, controlnet, vae, text_encoder):
        m.eval()
    return dict(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=make_inference_scheduler(),
    )


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    return build_tiny_components(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components):
    from pipelines.pipeline_enhancer import EnhancerPipeline

    pipe = EnhancerPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe_dir(tiny_pipe, tmp_path_factory):
    """The tiny pipeline saved with save_pretrained."""
    d = tmp_path_factory.mktemp("tiny_pipe")
    tiny_pipe.save_pretrained(d)
    return d


def random_image(size=(64, 64), seed: int = 0) -> Image.Image:
    """A smooth-ish random RGB test image of ``size=(W, H)``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.random((h // 8 + 1, w // 8 + 1, 3))
    img = Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
