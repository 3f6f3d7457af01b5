"""Batching, reference reuse, input safety, gradients, precision and error handling of AfineModel."""

from __future__ import annotations

import pytest
import torch

from modeling_afine import AfineOutput

from .conftest import degrade

FIELDS = list(AfineOutput.__dataclass_fields__)


@pytest.fixture(scope="module")
def batch(processor, photos):
    ref = photos["chelsea_96x160"]
    dis = [degrade(ref, f, noise=n, seed=i) for i, (f, n) in enumerate([(2, 0), (4, 5), (8, 10), (3, 20)])]
    refs = [ref, ref[:, ::-1].copy(), degrade(ref, 2), ref]
    return processor(dis, refs)


def test_batch_equals_single_calls(model, batch):
    with torch.no_grad():
        full = model(**batch)
        for i in range(batch["distorted"].shape[0]):
            one = model(distorted=batch["distorted"][i : i + 1], reference=batch["reference"][i : i + 1])
            for f in FIELDS:
                torch.testing.assert_close(getattr(one, f)[0], getattr(full, f)[i], rtol=1e-5, atol=1e-5)


def test_reference_reuse_equals_full_call(model, processor, photos):
    ref = photos["coffee_70x100"]
    dis = [degrade(ref, f, noise=4, seed=f) for f in (2, 3, 5)]
    inputs = processor(dis, ref)  # one reference, broadcast
    with torch.no_grad():
        enc = model.encode_reference(inputs["reference"])
        reused = model(distorted=inputs["distorted"], reference_encoding=enc)
        for i in range(3):
            full = model(distorted=inputs["distorted"][i : i + 1], reference=inputs["reference"])
            for f in FIELDS:
                torch.testing.assert_close(getattr(reused, f)[i], getattr(full, f)[0], rtol=1e-5, atol=1e-5)


def test_inputs_not_modified(model, batch):
    dis, ref = batch["distorted"].clone(), batch["reference"].clone()
    with torch.no_grad():
        model(distorted=batch["distorted"], reference=batch["reference"])
    assert torch.equal(dis, batch["distorted"]) and torch.equal(ref, batch["reference"])


def test_inputs_not_modified_when_stretched(model):
    x = torch.randn(2, 3, 50, 70)
    y = torch.randn(2, 3, 50, 70)
    x0, y0 = x.clone(), y.clone()
    with torch.no_grad():
        model(distorted=x, reference=y)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_gradients_flow_to_inputs(model, batch):
    dis = batch["distorted"][:2].clone().requires_grad_(True)
    out = model(distorted=dis, reference=batch["reference"][:2])
    out.score.sum().backward()
    assert dis.grad is not None and torch.isfinite(dis.grad).all() and dis.grad.abs().sum() > 0


def test_usable_as_a_loss(model, batch):
    """A few gradient steps on the distorted image lower its A-FINE score."""
    dis = batch["distorted"][2:3].clone().requires_grad_(True)
    ref = batch["reference"][2:3]
    opt = torch.optim.Adam([dis], lr=2e-3)
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = model(distorted=dis, reference=ref).score.sum()
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(model(distorted=dis, reference=ref).score.sum()) < first


def test_heads_run_fp32_under_bf16_autocast(model, batch):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    for f in FIELDS:
        value = getattr(out, f)
        assert value.dtype == torch.float32, f
        assert torch.isfinite(value).all(), f
    with torch.no_grad():
        ref = model(**batch)
    # bf16 backbone: close to, not equal to, fp32
    assert (out.score - ref.score).abs().max() < 5.0


def test_bf16_backbone_keeps_fp32_heads(converted_dir, batch):
    from modeling_afine import AfineModel

    m = AfineModel.from_pretrained(converted_dir, dtype=torch.bfloat16).eval()
    assert m.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert m.fidelity_head.alpha.dtype == torch.float32
    assert m.natural_head.proj_feat.weight.dtype == torch.float32
    with torch.no_grad():
        out = m(**batch)
    assert out.score.dtype == torch.float32 and torch.isfinite(out.score).all()


def test_naturalness_only_path(model, batch):
    with torch.no_grad():
        nr = model.naturalness(batch["distorted"])
        full = model(**batch)
    torch.testing.assert_close(nr.naturalness, full.naturalness_distorted, rtol=1e-5, atol=1e-6)
    assert ((nr.naturalness > -2) & (nr.naturalness < 2)).all()


def test_output_shapes_and_ranges(model, batch):
    with torch.no_grad():
        out = model(**batch)
    n = batch["distorted"].shape[0]
    for f in FIELDS:
        assert getattr(out, f).shape == (n,), f
    assert ((out.score >= 0) & (out.score <= 100)).all()
    assert ((out.fidelity > -2) & (out.fidelity < 2)).all()
    assert (out.fidelity_raw >= -1e-6).all()
    tup = model(**batch, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(FIELDS)


def test_asymmetric(model, batch):
    with torch.no_grad():
        ab = model(distorted=batch["distorted"][:1], reference=batch["reference"][:1])
        ba = model(distorted=batch["reference"][:1], reference=batch["distorted"][:1])
    torch.testing.assert_close(ab.fidelity_raw, ba.fidelity_raw, rtol=1e-4, atol=1e-6)  # D is symmetric
    assert not torch.allclose(ab.score, ba.score)  # A-FINE is not


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="same size"):
        model(distorted=torch.zeros(1, 3, 64, 64), reference=torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(distorted=torch.zeros(3, 64, 64), reference=torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(distorted=torch.zeros(1, 3, 64, 64, dtype=torch.uint8), reference=torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        model(distorted=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="batch must be 1 or 2"):
        model(distorted=torch.zeros(2, 3, 64, 64), reference=torch.zeros(3, 3, 64, 64))
