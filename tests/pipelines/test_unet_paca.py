"""PASD UNet: PACA geometry, equivalence with the stock UNet, loading stock weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from pipelines.unet_paca import PASDUNet2DConditionModel, is_paca_key

from .conftest import TINY_UNET

SD15_UNET = dict(cross_attention_dim=768)  # everything else: the diffusers defaults = SD-1.5 layout


def _inputs(seed=0, batch=2, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.tensor([10, 700][:batch])
    ehs = torch.randn(batch, 77, 32, generator=g)
    return x, t, ehs


def _residuals(seed=1, batch=2, size=8):
    """Random residuals with the skip shapes of the tiny UNet (3 levels, 1 layer per block)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(32, size), (32, size), (32, size // 2), (64, size // 2), (64, size // 4), (64, size // 4)]
    down = [torch.randn(batch, c, s, s, generator=g) for c, s in shapes]
    mid = torch.randn(batch, 64, size // 4, size // 4, generator=g)
    return down, mid


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return PASDUNet2DConditionModel(**TINY_UNET).eval()


def test_sd15_layout_has_12_paca_blocks_with_skip_widths():
    with torch.device("meta"):
        unet = PASDUNet2DConditionModel(**SD15_UNET)
    # (query width, key/value width) per up block and layer, from the spec's table
    expected = [
        [(1280, 1280)] * 3,
        [(1280, 1280), (1280, 1280), (1280, 640)],
        [(640, 640), (640, 640), (640, 320)],
        [(320, 320)] * 3,
    ]
    got = [
        [(m.in_channels, m.transformer_blocks[0].attn2.to_k.in_features) for m in block.pixel_attentions]
        for block in unet.up_blocks
    ]
    assert got == expected
    assert len(unet.paca_modules) == 12
    assert all(m.transformer_blocks[0].attn2.heads == 8 for m in unet.paca_modules)
    assert sum(p.numel() for p in unet.paca_parameters()) == 248_234_560
    assert sum(p.numel() for p in unet.parameters()) == 1_107_755_524
    names = {n for n, _ in unet.named_parameters() if is_paca_key(n)}
    assert "up_blocks.3.pixel_attentions.2.transformer_blocks.0.attn2.to_k.weight" in names
    assert "up_blocks.0.pixel_attentions.0.proj_out.bias" in names


def test_config_round_trip_keeps_every_key(tiny_unet):
    again = PASDUNet2DConditionModel.from_config(tiny_unet.config)
    assert tuple(again.config.block_out_channels) == (32, 64, 64)
    assert again.config.cross_attention_dim == 32
    assert {k for k, _ in again.named_parameters()} == {k for k, _ in tiny_unet.named_parameters()}


def _stock_copy(unet):
    stock = UNet2DConditionModel.from_config(unet.config).eval()
    sd = {k: v for k, v in unet.state_dict().items() if not is_paca_key(k)}
    stock.load_state_dict(sd, strict=True)
    return stock


def test_zeroed_paca_equals_stock_unet(tiny_unet):
    x, t, ehs = _inputs()
    down, mid = _residuals()
    stock = _stock_copy(tiny_unet)
    pasd = PASDUNet2DConditionModel.from_config(tiny_unet.config).eval()
    pasd.load_state_dict(tiny_unet.state_dict())
    with torch.no_grad():
        # PACA active: the outputs differ from the stock UNet
        assert (pasd(x, t, ehs).sample - stock(x, t, ehs).sample).abs().max() > 1e-3
        for m in pasd.paca_modules:
            m.proj_out.weight.zero_()
            m.proj_out.bias.zero_()
        ref = stock(x, t, ehs).sample
        out = pasd(x, t, ehs).sample
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        ref_c = stock(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        out_c = pasd(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        torch.testing.assert_close(out_c, ref_c, rtol=0, atol=1e-6)


def test_no_residuals_means_zero_residuals(tiny_unet):
    x, t, ehs = _inputs()
    down, mid = _residuals()
    zeros = [torch.zeros_like(d) for d in down]
    with torch.no_grad():
        a = tiny_unet(x, t, ehs).sample
        b = tiny_unet(x, t, ehs, down_block_additional_residuals=zeros, mid_block_additional_residual=torch.zeros_like(mid)).sample
        c = tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a - c).abs().max() > 1e-3


def test_paca_keys_come_from_the_matching_residual(tiny_unet):
    """Up block i, layer j attends to the residual of the skip it consumes (popped from the end)."""
    x, t, ehs = _inputs()
    down, mid = _residuals()
    seen = {}
    hooks = []
    for i, block in enumerate(tiny_unet.up_blocks):
        for j, m in enumerate(block.pixel_attentions):
            def hook(mod, args, kwargs, key=(i, j)):
                seen[key] = kwargs["encoder_hidden_states"]
            hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    finally:
        for h in hooks:
            h.remove()
    expected_index = {(0, 0): 5, (0, 1): 4, (1, 0): 3, (1, 1): 2, (2, 0): 1, (2, 1): 0}
    assert set(seen) == set(expected_index)
    for key, idx in expected_index.items():
        r = down[idx]
        tokens = r.flatten(2).transpose(1, 2)  # (B, H*W, C)
        torch.testing.assert_close(seen[key], tokens)


def test_only_one_residual_argument_is_an_error(tiny_unet):
    x, t, ehs = _inputs()
    down, mid = _residuals()
    with pytest.raises(ValueError, match="both"):
        tiny_unet(x, t, ehs, down_block_additional_residuals=down)
    with pytest.raises(ValueError, match="both"):
        tiny_unet(x, t, ehs, mid_block_additional_residual=mid)


def test_stock_weights_load_leaving_only_paca_missing(tiny_unet, tmp_path):
    stock = _stock_copy(tiny_unet)
    # in memory
    pasd = PASDUNet2DConditionModel.from_unet(stock)
    for k, v in stock.state_dict().items():
        torch.testing.assert_close(pasd.state_dict()[k], v, rtol=0, atol=0)
    result = pasd.load_state_dict(stock.state_dict(), strict=False)
    assert result.missing_keys and all(is_paca_key(k) for k in result.missing_keys)
    assert not result.unexpected_keys
    # from a saved stock UNet folder (the SD-1.5 "unet" subfolder case)
    stock.save_pretrained(tmp_path / "unet")
    fresh = PASDUNet2DConditionModel(**TINY_UNET)
    for low_mem in (True, False):
        loaded = PASDUNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet", low_cpu_mem_usage=low_mem)
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        for k, v in stock.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
        # PACA weights: a real default initialisation (diffusers would leave garbage / meta tensors)
        for (name, p), (_, q) in zip(loaded.named_parameters(), fresh.named_parameters()):
            if is_paca_key(name):
                assert torch.isfinite(p).all(), name
                if name.endswith("norm.weight") or name.endswith("norm1.weight"):
                    assert torch.equal(p, torch.ones_like(p)), name
                if name.endswith("to_q.weight"):
                    assert 0.3 < p.std() / q.std() < 3, name
    x, t, ehs = _inputs()
    with torch.no_grad():
        assert torch.isfinite(loaded(x, t, ehs).sample).all()
    with pytest.raises(ValueError, match="missing non-PACA"):
        pasd.load_stock_state_dict({k: v for k, v in stock.state_dict().items() if "conv_in" not in k})


def test_pasd_folder_round_trip_is_exact(tiny_unet, tmp_path):
    tiny_unet.save_pretrained(tmp_path / "unet")
    loaded = PASDUNet2DConditionModel.from_pretrained(tmp_path / "unet", low_cpu_mem_usage=True).eval()
    x, t, ehs = _inputs()
    down, mid = _residuals()
    with torch.no_grad():
        a = tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        b = loaded(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_checkpointing_matches_and_trains_paca(tiny_unet):
    x, t, ehs = _inputs()
    down, mid = _residuals()
    model = PASDUNet2DConditionModel.from_config(tiny_unet.config)
    model.load_state_dict(tiny_unet.state_dict())
    model.train()
    out = model(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if is_paca_key(n)}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    out2 = model(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    out2.square().mean().backward()
    for n, p in model.named_parameters():
        if is_paca_key(n):
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


def test_works_with_stock_controlnet(tiny_unet):
    controlnet = ControlNetModel.from_unet(tiny_unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    x, t, ehs = _inputs()
    cond = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        down, mid = controlnet(x, t, ehs, controlnet_cond=cond, return_dict=False)
        out = tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert len(down) == 6 and out.shape == x.shape


def _barrier_hook(unet, barrier):
    """A hook inside an up block that makes concurrent calls meet there (both calls are then in the
    middle of their forward at the same time)."""

    def hook(mod, args, kwargs):
        barrier.wait(timeout=30)

    return unet.up_blocks[1].pixel_attentions[0].register_forward_pre_hook(hook, with_kwargs=True)


def test_concurrent_calls_from_two_threads_equal_sequential_calls(tiny_unet):
    import threading

    calls = []
    for seed in (0, 5):
        x, t, ehs = _inputs(seed)
        down, mid = _residuals(seed + 1)
        calls.append(dict(sample=x, timestep=t, encoder_hidden_states=ehs,
                          down_block_additional_residuals=down, mid_block_additional_residual=mid))
    with torch.no_grad():
        sequential = [tiny_unet(**kw).sample for kw in calls]
    before = {i: set(vars(b)) for i, b in enumerate(tiny_unet.up_blocks)}
    results, errors = [None, None], []
    handle = _barrier_hook(tiny_unet, threading.Barrier(2))

    def work(i):
        try:
            with torch.no_grad():
                results[i] = tiny_unet(**calls[i]).sample
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        handle.remove()
    assert not errors, errors
    for got, ref in zip(results, sequential):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert {i: set(vars(b)) for i, b in enumerate(tiny_unet.up_blocks)} == before  # no per-call attributes


def test_nested_call_inside_a_forward_does_not_disturb_the_outer_one(tiny_unet):
    x, t, ehs = _inputs(0)
    down, mid = _residuals(1)
    x2, t2, ehs2 = _inputs(3)
    down2, mid2 = _residuals(4)
    with torch.no_grad():
        ref = tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        inner_ref = tiny_unet(x2, t2, ehs2).sample
    inner = []

    def hook(mod, args, kwargs):
        if not inner:
            inner.append(None)
            inner[0] = tiny_unet(x2, t2, ehs2).sample  # re-enters the same UNet mid-forward

    handle = tiny_unet.up_blocks[0].pixel_attentions[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = tiny_unet(x, t, ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    finally:
        handle.remove()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(inner[0], inner_ref, rtol=0, atol=0)


def test_up_blocks_refuse_calls_without_their_maps(tiny_unet):
    block = tiny_unet.up_blocks[0]
    h = torch.randn(1, 64, 2, 2)
    skips = (torch.randn(1, 64, 2, 2), torch.randn(1, 64, 2, 2))
    with pytest.raises(RuntimeError, match="PASDUNet2DConditionModel.forward"):
        block(h, skips, torch.randn(1, 128))
