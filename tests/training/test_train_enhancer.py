"""Enhancer training entry (training.train_enhancer), in-process on CPU with tiny SD components."""

from __future__ import annotations

import pytest
import torch

from tests.pipelines.conftest import TINY_UNET, build_tiny_components, random_image


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _run(argv):
    from training.train_enhancer import main

    try:
        return main(argv)
    finally:
        _reset_accelerate()


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny SD-1.5-style folder: stock UNet (no PACA), VAE, CLIP, tokenizer, DDPM scheduler."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    root = tmp_path_factory.mktemp("sd")
    comps = build_tiny_components(root)
    stock = UNet2DConditionModel(**TINY_UNET)
    stock.save_pretrained(root / "unet")
    comps["vae"].save_pretrained(root / "vae")
    comps["text_encoder"].save_pretrained(root / "text_encoder")
    comps["tokenizer"].save_pretrained(root / "tokenizer")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(root / "scheduler")
    # an "enhancer" folder (like the released weights) to start from
    comps["unet"].save_pretrained(root / "enhancer" / "unet")
    comps["controlnet"].save_pretrained(root / "enhancer" / "controlnet")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for i in range(4):
        random_image((80, 64), seed=i).save(d / f"img{i}.png")
    random_image((40, 48), seed=9).save(d / "small.png")  # short side < resolution: resized up
    return d


def _args(sd_dir, data_dir, out, *extra):
    return ["--pretrained-model", str(sd_dir), "--train-data-dir", str(data_dir), "--output-dir", str(out),
            "--resolution", "64", "--train-batch-size", "2", "--gradient-accumulation-steps", "1",
            "--seed", "0", "--cpu", "--lr-warmup-steps", "0", "--learning-rate", "1e-3", *extra]


def _state(path, sub):
    from safetensors.torch import load_file

    return load_file(str(next((path / sub).glob("*.safetensors"))))


def test_dataset_items(sd_dir, data_dir):
    from transformers import CLIPTokenizer

    from training.enhancer_data import EnhancerTrainDataset

    ds = EnhancerTrainDataset([data_dir], CLIPTokenizer.from_pretrained(sd_dir / "tokenizer"), resolution=64)
    assert len(ds) == 5
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["pixel_values"].shape == (3, 64, 64) and item["conditioning_pixel_values"].shape == (3, 64, 64)
        assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
        assert item["input_ids"].shape == (77,) and item["input_ids"][0] == 512 and item["input_ids"][1] == 513


def test_training_changes_only_trainable_parameters(sd_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(_args(sd_dir, data_dir, out, "--enhancer", str(sd_dir / "enhancer"), "--max-train-steps", "2",
                      "--checkpointing-steps", "100")) == 0
    start_unet, end_unet = _state(sd_dir / "enhancer", "unet"), _state(out, "unet")
    changed = {k for k in start_unet if not torch.equal(start_unet[k], end_unet[k])}
    assert changed and all(".pixel_attentions." in k for k in changed)
    start_cn, end_cn = _state(sd_dir / "enhancer", "controlnet"), _state(out, "controlnet")
    assert any(not torch.equal(start_cn[k], end_cn[k]) for k in start_cn)
    for sub in ("vae", "text_encoder"):
        a, b = _state(sd_dir, sub), _state(out / "pipeline", sub)
        assert all(torch.equal(a[k], b[k]) for k in a)
    from pipelines.pipeline_enhancer import EnhancerPipeline

    pipe = EnhancerPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(image=random_image((32, 32)), num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)


def test_checkpoint_and_resume(sd_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(_args(sd_dir, data_dir, out, "--max-train-steps", "2", "--checkpointing-steps", "1",
                      "--checkpoints-total-limit", "2")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    ck2 = _state(out / "checkpoint-2", "controlnet")
    # the stock SD UNet was extended with PACA blocks, and only those changed from SD
    sd_unet, ck_unet = _state(sd_dir, "unet"), _state(out / "checkpoint-2", "unet")
    assert all(torch.equal(sd_unet[k], ck_unet[k]) for k in sd_unet)
    assert any(".pixel_attentions." in k for k in ck_unet)
    # resuming at the last step: nothing left to train; the exported weights are checkpoint-2's
    assert _run(_args(sd_dir, data_dir, out, "--max-train-steps", "2", "--checkpointing-steps", "1",
                      "--resume-from-checkpoint", "latest")) == 0
    final = _state(out, "controlnet")
    assert all(torch.equal(ck2[k], final[k]) for k in ck2)
    # resuming with more steps continues from step 2
    assert _run(_args(sd_dir, data_dir, out, "--max-train-steps", "3", "--checkpointing-steps", "1",
                      "--checkpoints-total-limit", "2", "--resume-from-checkpoint", "latest")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    ck3 = _state(out / "checkpoint-3", "controlnet")
    assert any(not torch.equal(ck2[k], ck3[k]) for k in ck2)


def test_bad_data_dir_is_a_clear_error(sd_dir, tmp_path, capsys):
    assert _run(_args(sd_dir, tmp_path / "nothing", tmp_path / "run", "--max-train-steps", "1")) == 2
    assert "not found" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(data_dir, tmp_path, capsys):
    assert _run(_args(tmp_path / "no-sd", data_dir, tmp_path / "run", "--max-train-steps", "1")) == 1
    assert "could not load the models" in capsys.readouterr().err


def _count_updates(gas: int, nested: bool, batches: int = 8) -> int:
    """Optimiser updates over ``batches`` batches under accelerate, with the official nested
    ``accumulate(controlnet), accumulate(unet)`` or our single ``accumulate(controlnet, unet)``."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    controlnet, unet = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    acc = Accelerator(gradient_accumulation_steps=gas, cpu=True)
    try:
        opt = torch.optim.SGD(list(controlnet.parameters()) + list(unet.parameters()), lr=0.1)
        controlnet, unet, opt = acc.prepare(controlnet, unet, opt)
        updates, last = 0, unet.weight.detach().clone()
        for _ in range(batches):
            if nested:
                ctx = [acc.accumulate(controlnet), acc.accumulate(unet)]
            else:
                ctx = [acc.accumulate(controlnet, unet)]
            with ctx[0], (ctx[1] if nested else torch.enable_grad()):
                loss = unet(controlnet(torch.ones(1, 2))).square().sum()
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
            if not torch.equal(unet.weight, last):
                updates += 1
                last = unet.weight.detach().clone()
        return updates
    finally:
        _reset_accelerate()


def test_default_accumulation_matches_the_released_update_cadence():
    """The official nested accumulate with gradient_accumulation_steps=4 stepped every 2 batches; our
    default (2, single accumulate) steps exactly as often."""
    from training.train_enhancer import parse_args

    official = _count_updates(4, nested=True)
    assert official == 4  # 8 batches, one update every 2 (not every 4)
    default = parse_args(["--pretrained-model", "x", "--train-data-dir", "d", "--output-dir", "o"])
    assert _count_updates(default.gradient_accumulation_steps, nested=False) == official
    assert default.train_batch_size == 4
