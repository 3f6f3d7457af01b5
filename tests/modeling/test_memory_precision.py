"""The streaming forward (blocks reduced to statistics one at a time) against the all-features path.

The all-features path is the pre-streaming computation: ``extract_features`` keeps all 12 block outputs, then the
heads' ``forward`` reduce them. fp32 results must be bit-identical; gradients must match; block outputs must not
pile up in memory.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import modeling_afine.modeling_afine as afine_modeling
from modeling_afine import AfineConfig, AfineModel
from modeling_afine.modeling_afine import stretch_to_multiple, target_size

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2)


@pytest.fixture(scope="module")
def tiny_model() -> AfineModel:
    torch.manual_seed(0)
    return AfineModel(AfineConfig(vision_config=TINY)).eval()


def all_features_path(model: AfineModel, dis: torch.Tensor, ref: torch.Tensor):
    """u_dis, u_ref, D exactly as the model computed them before streaming (one joint pass when R == B)."""
    size = target_size(*dis.shape[-2:])
    dp, rp = stretch_to_multiple(dis, size=size), stretch_to_multiple(ref, size=size)
    b = dis.shape[0]
    if ref.shape[0] == b:
        feats = model.extract_features(torch.cat([dp, rp]))
        fd, fr = [f[:b] for f in feats], [f[b:] for f in feats]
    else:
        fd, fr = list(model.extract_features(dp)), list(model.extract_features(rp))
    with torch.autocast("cpu", enabled=False):
        u_dis = model.natural_head(dp.float(), fd)
        u_ref = model.natural_head(rp.float(), fr)
        dist = model.fidelity_head(dp.float(), rp.float(), fd, fr)
    return u_dis, u_ref, dist


def images(batch: int, ref_batch: int, size=(70, 100), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g), torch.randn(ref_batch, 3, *size, generator=g)


@pytest.mark.parametrize("joint_tokens", [afine_modeling._MAX_JOINT_TOKENS, 0], ids=["joint", "lockstep"])
@pytest.mark.parametrize("ref_batch", [3, 1], ids=["paired", "broadcast"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_streaming_is_bit_identical_to_all_features_path(tiny_model, monkeypatch, joint_tokens, ref_batch, autocast):
    monkeypatch.setattr(afine_modeling, "_MAX_JOINT_TOKENS", joint_tokens)
    dis, ref = images(3, ref_batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = tiny_model(dis, ref)
        enc_out = tiny_model(dis, reference_encoding=tiny_model.encode_reference(ref))
        nr = tiny_model.naturalness(dis)
        u_dis, u_ref, dist = all_features_path(tiny_model, dis, ref)
    assert torch.equal(out.naturalness_distorted_raw, u_dis)
    assert torch.equal(out.naturalness_reference_raw, u_ref.expand(3))
    assert torch.equal(out.fidelity_raw, dist)
    assert torch.equal(enc_out.fidelity_raw, dist)
    assert torch.equal(enc_out.naturalness_distorted_raw, u_dis)
    assert torch.equal(nr.naturalness_raw, u_dis)
    # The bit-identical raw terms give bit-identical scores; sanity-check that they are not trivial.
    assert torch.equal(enc_out.score, out.score) and out.score.std() > 0


def test_big_images_are_bit_identical_in_lockstep(tiny_model):
    """A pair big enough for the default policy's lockstep passes and heap trimming (2040x2070 -> 2048x2080)."""
    dis, ref = images(1, 1, size=(2040, 2070), seed=2)
    tokens = 1 + (2048 // 32) * (2080 // 32)
    assert 2 * tokens > afine_modeling._MAX_JOINT_TOKENS and tokens >= afine_modeling._TRIM_TOKENS
    with torch.no_grad():
        out = tiny_model(dis, ref)
        u_dis, u_ref, dist = all_features_path(tiny_model, dis, ref)
    assert torch.equal(out.naturalness_distorted_raw, u_dis) and torch.equal(out.naturalness_reference_raw, u_ref)
    assert torch.equal(out.fidelity_raw, dist)


def test_heap_trimmed_for_big_images_only(tiny_model, monkeypatch):
    """Trimming the heap is for images with many tokens each; a batch of small images (many tokens in total) skips
    it, since every trimmed page is faulted back in by the next block."""
    calls = []
    monkeypatch.setattr(afine_modeling, "_release_free_heap", lambda: calls.append(1))
    monkeypatch.setattr(afine_modeling, "_TRIM_TOKENS", 26)  # 160x160 -> 5x5 patches + CLS = 26 tokens
    with torch.no_grad():
        tiny_model(*images(40, 40, size=(64, 64)))  # 80 images of 5 tokens: 400 tokens in all
        assert calls == []
        tiny_model(*images(1, 1, size=(160, 160)))
    # Before the embedding and before each block, in every pass over the big images.
    assert len(calls) >= 1 + TINY["num_hidden_layers"] and len(calls) % (1 + TINY["num_hidden_layers"]) == 0


def test_encoding_without_statistics_still_scores(tiny_model):
    """An encoding built by hand (only pixels, features, naturalness) gives the same numbers."""
    dis, ref = images(2, 1)
    with torch.no_grad():
        enc = tiny_model.encode_reference(ref)
        full = tiny_model(dis, reference_encoding=enc)
        enc.token_means = enc.token_variances = None
        bare = tiny_model(dis, reference_encoding=enc)
    assert torch.equal(full.score, bare.score)
    assert len(enc.features) == tiny_model.config.num_feature_layers
    assert enc.features[0].shape == (1, 3 * 4, TINY["hidden_size"])  # 70x100 -> 96x128 -> 3x4 patches, no CLS


def test_heads_with_different_pixel_buffers(monkeypatch):
    """If a checkpoint ever gave the two heads different mean/std buffers, each head keeps its own."""
    torch.manual_seed(3)
    model = AfineModel(AfineConfig(vision_config=TINY)).eval()
    model.natural_head.std.mul_(1.5)
    dis, ref = images(2, 2)
    with torch.no_grad():
        out = model(dis, ref)
        u_dis, u_ref, dist = all_features_path(model, dis, ref)
    assert torch.equal(out.naturalness_distorted_raw, u_dis) and torch.equal(out.fidelity_raw, dist)


def _grads(model: AfineModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _old_loss(model: AfineModel, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    u_dis, u_ref, dist = all_features_path(model, dis, ref)
    n_dis, n_ref = model.natural_calibration(u_dis), model.natural_calibration(u_ref)
    score = model.scale_score(model.adapter(n_dis, n_ref, model.fidelity_calibration(dist)))
    return score.sum()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_gradients_match_all_features_path(checkpointing):
    torch.manual_seed(4)
    model = AfineModel(AfineConfig(vision_config=TINY)).train()
    dis, ref = images(2, 2, seed=5)
    dis.requires_grad_(True)
    _old_loss(model, dis, ref).backward()
    expected, expected_input = _grads(model), dis.grad.clone()
    model.zero_grad()
    dis.grad = None
    if checkpointing:
        model.activation_checkpointing_enable()
        assert all(layer.gradient_checkpointing for layer in model.vision_model.encoder.layers)
    model(dis, ref).score.sum().backward()
    got = _grads(model)
    assert set(got) == set(expected)
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in got and "fidelity_head.alpha" in got
    # The graphs differ in shape (shared ReLU/statistics), so gradients agree to fp32 rounding, not bit for bit.
    for name, grad in list(expected.items()) + [("input", expected_input)]:
        value = dis.grad if name == "input" else got[name]
        scale = max(float(grad.abs().max()), 1e-3)
        assert float((value - grad).abs().max()) <= 1e-5 * scale, name
    assert expected_input.abs().sum() > 0


def test_block_outputs_do_not_accumulate(tiny_model, monkeypatch):
    """Without autograd, block k's output is freed before block k + 2 runs (the old path kept all 12)."""
    alive: list[weakref.ref] = []
    overlaps: list[int] = []

    def hook(module, args, output):
        gc.collect()
        overlaps.append(sum(r() is not None for r in alive))
        alive.append(weakref.ref(output))

    model = AfineModel(AfineConfig(vision_config={**TINY, "num_hidden_layers": 6})).eval()
    handles = [layer.register_forward_hook(hook) for layer in model.vision_model.encoder.layers]
    try:
        for joint in (afine_modeling._MAX_JOINT_TOKENS, 0):
            monkeypatch.setattr(afine_modeling, "_MAX_JOINT_TOKENS", joint)
            dis, ref = images(2, 2)
            alive.clear()
            overlaps.clear()
            with torch.no_grad():
                model(dis, ref)
            # joint: one pass, only the previous block alive; lockstep: the previous block of each pass.
            limit = 1 if joint else 2
            assert len(overlaps) == (6 if joint else 12) and max(overlaps) <= limit, overlaps
    finally:
        for h in handles:
            h.remove()


@pytest.mark.slow
def test_4k_pair_peak_memory():
    """A 3840x2160 pair through the full-size ViT-B/32 stays under 1.5 GB peak RSS (fp32), in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_big_image.py"), "--dtype", "fp32", "--json"],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["peak_rss_mb"] < 1536, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_quick_gelu_is_bit_identical(dtype):
    from transformers.activations import QuickGELUActivation

    from modeling_afine.modeling_afine import _QuickGELU

    x = (torch.randn(3, 50, 96) * 4).to(dtype)
    expected = QuickGELUActivation()(x)
    with torch.no_grad():
        assert torch.equal(_QuickGELU()(x.clone()), expected)
    leaf = x.clone().requires_grad_(True)
    out = _QuickGELU()(leaf)
    assert torch.equal(out.detach(), expected) and torch.equal(leaf.detach(), x)  # no in-place with a graph
    out.sum().backward()
    ref_leaf = x.clone().requires_grad_(True)
    QuickGELUActivation()(ref_leaf).sum().backward()
    assert torch.equal(leaf.grad, ref_leaf.grad)


def test_model_uses_the_lean_activation(tiny_model):
    from modeling_afine.modeling_afine import _QuickGELU

    assert all(isinstance(layer.mlp.activation_fn, _QuickGELU) for layer in tiny_model.vision_model.encoder.layers)


def test_forward_without_reference_points_to_naturalness(tiny_model):
    """``model(**processor(images=x))`` has no reference: the error names the no-reference method, which works."""
    import numpy as np

    from modeling_afine import AfineImageProcessor

    x = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    inputs = AfineImageProcessor()(images=x)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"model\.naturalness\(") as info:
            tiny_model(**inputs)
        assert "\n" not in str(info.value) and "reference" in str(info.value)
        # the suggested call does what the message says
        nr = tiny_model.naturalness(inputs["distorted"]).naturalness
        assert nr.shape == (1,) and torch.isfinite(nr).all()
        with pytest.raises(ValueError, match="not both"):
            tiny_model(inputs["distorted"], inputs["distorted"], tiny_model.encode_reference(inputs["distorted"]))


# ------------------------------------------------------------------ the scorer's route for a shared reference


def _uint8_images(n: int, size=(70, 100), seed: int = 7):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _spy(model, monkeypatch):
    """Record how each forward got its reference, and every encode_reference call."""
    calls = []
    forward, encode = model.forward, model.encode_reference

    def spy_forward(*args, **kwargs):
        calls.append("reference" if kwargs.get("reference") is not None else "encoding")
        return forward(*args, **kwargs)

    def spy_encode(*args, **kwargs):
        calls.append("encode_reference")
        return encode(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy_forward)
    monkeypatch.setattr(model, "encode_reference", spy_encode)
    return calls


@pytest.mark.parametrize("case", ["single pair", "big images", "small batch"])
def test_scorer_route_for_a_shared_reference(tiny_model, monkeypatch, case):
    """One distorted image, or big images: the reference goes through the forward with the batch (lockstep for big
    ones), not into an encoding that keeps its 12 block outputs. Several small images still share one encoding.
    Either way the scores are bit-identical to the encoding route and to the model's own forward."""
    from modeling_afine import AfineImageProcessor, AfineScorer

    n = 1 if case == "single pair" else 3
    dis = _uint8_images(n)
    ref = _uint8_images(1, seed=8)[0]
    if case == "big images":  # 70x100 -> 96x128: 13 tokens, made "big" (the 4K route) for this test
        monkeypatch.setattr(afine_modeling, "_TRIM_TOKENS", 13)
        monkeypatch.setattr(afine_modeling, "_MAX_JOINT_TOKENS", 0)  # and the model's lockstep passes with it
    scorer = AfineScorer(tiny_model, batch_size=2, num_workers=0)
    calls = _spy(tiny_model, monkeypatch)
    got = scorer.score(dis, ref)
    if case == "small batch":
        assert calls == ["encode_reference", "encoding", "encoding"]  # 2 batches, one encoding
    else:
        assert calls == ["reference"] * (1 if n == 1 else 2)  # one pass per batch, reference included
    # The encoding route (what the scorer did before for every shared reference) gives the same bits.
    monkeypatch.setattr(AfineScorer, "_reference_in_lockstep", lambda self, images, size: False)
    calls.clear()
    encoded = scorer.score(dis, ref)
    assert calls[0] == "encode_reference"
    for field in ("score", "fidelity_raw", "naturalness_distorted_raw", "naturalness_reference_raw"):
        assert torch.equal(getattr(got, field), getattr(encoded, field)), field
    with torch.no_grad():
        own = tiny_model(**AfineImageProcessor()(dis, ref))
    assert torch.equal(got.score, own.score)
    assert n == 1 or got.score.std() > 0


def test_scorer_pairs_with_their_own_references_unchanged(tiny_model, monkeypatch):
    """Pairs with a reference each (``afine score d r``): the references go to the model as decoded when they have
    the distorted image's size (the model stretches both), and stretched to the target when resized; scores are
    bit-identical to the model's own forward on the processor's (stretched) tensors."""
    from modeling_afine import AfineImageProcessor, AfineScorer

    dis = _uint8_images(3)
    refs = _uint8_images(2, seed=9) + _uint8_images(1, size=(50, 80), seed=10)  # the last one needs resizing
    stretched = []
    original = afine_modeling.AfineModel.forward

    def spy(self, distorted, reference=None, **kwargs):
        stretched.append((tuple(distorted.shape[-2:]), tuple(reference.shape[-2:])))
        return original(self, distorted, reference, **kwargs)

    monkeypatch.setattr(afine_modeling.AfineModel, "forward", spy)
    got = AfineScorer(tiny_model, batch_size=1, num_workers=0).score(dis, refs, resize_reference=True)
    assert stretched[:2] == [((70, 100), (70, 100))] * 2  # as decoded: the model stretches them
    assert stretched[2] == ((96, 128), (96, 128))  # the resized reference is stretched to the target, so is x
    processor = AfineImageProcessor(resize_reference=True)
    with torch.no_grad():
        for i in range(3):
            own = original(tiny_model, **processor(dis[i], refs[i]))
            assert torch.equal(got.score[i : i + 1], own.score) and torch.equal(got.fidelity_raw[i : i + 1], own.fidelity_raw)
