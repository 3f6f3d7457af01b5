"""The bf16 CPU fast paths (blocked attention, row-chunked MLP, patch embedding as a GEMM) against the stock modules.

They must agree with the stock bf16 computation to bf16 precision, run only where they apply (bf16, CPU, no
graph, no autocast) and leave every other path, fp32 included, to the stock transformers modules.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPMLP, CLIPVisionEmbeddings

import modeling_afine.modeling_afine as afine_modeling
from modeling_afine import AfineConfig, AfineModel

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


class _StockEmbeddings(afine_modeling.AfineVisionEmbeddings):
    def forward(self, pixel_values, interpolate_pos_encoding=True):
        return CLIPVisionEmbeddings.forward(self, pixel_values, interpolate_pos_encoding=True)


def _stock_copy(model: AfineModel) -> AfineModel:
    """The same weights with transformers' own attention, MLP and patch convolution."""
    stock = copy.deepcopy(model)
    for layer in stock.vision_model.encoder.layers:
        layer.self_attn.__class__ = CLIPAttention
        layer.mlp.__class__ = CLIPMLP
    stock.vision_model.embeddings.__class__ = _StockEmbeddings
    return stock


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    fp32 = AfineModel(AfineConfig(vision_config=TINY)).eval()
    bf16 = copy.deepcopy(fp32)
    bf16.vision_model.to(torch.bfloat16)
    return fp32, bf16


def _images(batch=3, size=(90, 130), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g), torch.randn(1, 3, *size, generator=g)


def test_modules_are_the_fast_subclasses_with_stock_parameters(models):
    fp32, _ = models
    layer = fp32.vision_model.encoder.layers[0]
    assert isinstance(layer.self_attn, afine_modeling._AfineAttention) and isinstance(layer.self_attn, CLIPAttention)
    assert isinstance(layer.mlp, afine_modeling._AfineMLP) and isinstance(layer.mlp, CLIPMLP)
    names = {k for k in fp32.state_dict() if ".layers.0." in k}
    assert {n.split(".layers.0.")[1] for n in names} >= {
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.out_proj.weight",
        "mlp.fc1.weight", "mlp.fc2.weight",
    }


def test_bf16_scores_agree_with_stock_bf16_modules(models):
    fp32, bf16 = models
    stock = _stock_copy(bf16)
    dis, ref = _images()
    with torch.inference_mode():
        fast_out, stock_out, exact = bf16(dis, ref), stock(dis, ref), fp32(dis, ref)
    for field in ("score", "fidelity_raw", "naturalness_distorted_raw", "naturalness_reference_raw"):
        fast, slow, truth = (getattr(o, field).float() for o in (fast_out, stock_out, exact))
        # bf16 keeps ~3 significant digits: both bf16 computations sit within that of fp32 and of each other.
        scale = truth.abs().max().clamp_min(1.0)
        assert (fast - slow).abs().max() <= 2e-2 * scale, field
        assert (fast - truth).abs().max() <= 2e-2 * scale, field


def test_fast_paths_replace_sdpa_and_conv_only_in_bf16_cpu_inference(models, monkeypatch):
    fp32, bf16 = models
    calls = {"sdpa": 0, "conv": 0}
    real_sdpa, real_conv = F.scaled_dot_product_attention, F.conv2d

    def sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return real_sdpa(*args, **kwargs)

    def conv(*args, **kwargs):
        calls["conv"] += 1
        return real_conv(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(torch.nn.functional, "conv2d", conv)
    dis, ref = _images(batch=2)
    with torch.inference_mode():
        bf16(dis, ref)
    assert calls == {"sdpa": 0, "conv": 0}
    with torch.inference_mode():
        fp32(dis, ref)
    # Distorted batch and the broadcast reference go through separate passes: two of each per layer.
    assert calls == {"sdpa": 2 * TINY["num_hidden_layers"], "conv": 2}
    # Autocast keeps the stock modules too, and so does the switch for bf16 models.
    calls.update(sdpa=0, conv=0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fp32(dis, ref)
    assert calls == {"sdpa": 2 * TINY["num_hidden_layers"], "conv": 2}
    calls.update(sdpa=0, conv=0)
    monkeypatch.setenv(afine_modeling.STOCK_MODULES_ENV, "1")
    with torch.inference_mode():
        switched = bf16(dis, ref)
    assert calls == {"sdpa": 2 * TINY["num_hidden_layers"], "conv": 2}
    with torch.inference_mode():
        stock = _stock_copy(bf16)(dis, ref)
    assert torch.equal(switched.score, stock.score)


def test_bf16_training_uses_stock_modules_and_has_gradients(models):
    _, bf16 = models
    model = copy.deepcopy(bf16).train()
    dis, ref = _images(batch=2, size=(64, 64))
    out = model(dis, ref)
    out.score.float().sum().backward()
    grads = [p.grad for p in model.vision_model.encoder.layers[0].self_attn.parameters()]
    assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_blocked_attention_equals_one_block(models, monkeypatch):
    _, bf16 = models
    attn = bf16.vision_model.encoder.layers[0].self_attn
    hidden = torch.randn(2, 29, TINY["hidden_size"]).to(torch.bfloat16)
    with torch.inference_mode():
        whole, _ = attn(hidden)
        # 2 x 4 heads x 29 tokens per row: 10 rows per block, the last one 9 rows.
        monkeypatch.setattr(afine_modeling, "_ATTENTION_BLOCK_ELEMENTS", 2 * 4 * 29 * 10)
        blocked, _ = attn(hidden)
        stock, _ = CLIPAttention.forward(attn, hidden)
        exact, _ = CLIPAttention.forward(copy.deepcopy(attn).float(), hidden.float())
    assert blocked.shape == whole.shape == (2, 29, TINY["hidden_size"])
    # Each query row's arithmetic does not depend on the block (bit-identical here; one bf16 ulp allowed).
    torch.testing.assert_close(blocked.float(), whole.float(), rtol=2**-7, atol=1e-3)
    scale = exact.abs().max()
    assert (whole.float() - exact).abs().max() <= 3e-2 * scale
    assert (stock.float() - exact).abs().max() <= 3e-2 * scale


def test_chunked_mlp_matches_stock(models, monkeypatch):
    fp32, bf16 = models
    mlp = bf16.vision_model.encoder.layers[1].mlp
    exact_mlp = fp32.vision_model.encoder.layers[1].mlp
    monkeypatch.setattr(afine_modeling, "_MLP_CHUNK_ROWS", 7)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 200, TINY["hidden_size"], generator=g).to(torch.bfloat16)  # 600 rows: chunks of 7, 5 left
    with torch.inference_mode():
        chunked = mlp(hidden)
        stock = CLIPMLP.forward(mlp, hidden.clone())
        exact = CLIPMLP.forward(exact_mlp, hidden.float())
        monkeypatch.setattr(afine_modeling, "_QUICK_GELU_SLOPE", 1.0)
        unit_slope = mlp(hidden)
    assert chunked.shape == stock.shape and chunked.dtype == torch.bfloat16
    # quick_gelu folded into fc1/fc2 (silu of the 1.702-scaled accumulator): within about a bf16 ulp of the
    # stock bf16 MLP at the outputs' scale, and no further from fp32 than the stock bf16 MLP is.
    ulp = 2**-7 * float(stock.float().abs().max())
    torch.testing.assert_close(chunked.float(), stock.float(), rtol=2**-7, atol=1.5 * ulp)
    fast_err, stock_err = (chunked.float() - exact).abs(), (stock.float() - exact).abs()
    assert fast_err.mean() <= 1.1 * stock_err.mean()
    assert fast_err.max() <= 1.5 * stock_err.max()
    # A wrong slope is caught: with slope 1 the fold computes silu(h), not quick_gelu(h).
    assert (unit_slope.float() - exact).abs().mean() > 5 * stock_err.mean()


def test_patch_gemm_matches_convolution(models):
    _, bf16 = models
    emb = bf16.vision_model.embeddings
    pixels = torch.randn(2, 3, 96, 160)
    with torch.inference_mode():
        fast = emb(pixels)
        stock = CLIPVisionEmbeddings.forward(emb, pixels, interpolate_pos_encoding=True)
    assert fast.shape == stock.shape == (2, 1 + 3 * 5, TINY["hidden_size"])
    torch.testing.assert_close(fast.float(), stock.float(), rtol=0, atol=3e-2)
