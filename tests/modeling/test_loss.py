"""AfineLoss: values against the CLI and the scorer, gradients against finite differences and the independent
reference implementation, freezing, module-tree behaviour, autocast, checkpointing, optimisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from .conftest import HEADS, degrade
from .reference_afine import MEAN, STD, clip_features, fidelity_raw, natural_raw

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


def _tensor(img: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """uint8 HWC -> [1, 3, H, W] in [0, 1], as a PNG reader + /255 gives it."""
    return (torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].to(dtype) / 255).contiguous()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, photos):
    """Two distorted versions of one 70x100 photo (not multiples of 32: the stretch is exercised) and the photo."""
    folder = tmp_path_factory.mktemp("loss_pngs")
    ref = photos["coffee_70x100"]
    images = {"d0.png": degrade(ref, 2, 6.0, seed=1), "d1.png": degrade(ref, 4, 0.0), "ref.png": ref}
    for name, arr in images.items():
        Image.fromarray(arr).save(folder / name)
    return folder, images


@pytest.fixture(scope="module")
def loss_fn(converted_dir):
    from modeling_afine import AfineLoss

    return AfineLoss(converted_dir, output="score", reduction="none")


@pytest.fixture(scope="module")
def model64(converted_dir):
    from modeling_afine import AfineModel

    return AfineModel.from_pretrained(converted_dir).double().eval()


# ------------------------------------------------------------------------------------------------ values


def test_values_equal_the_single_pair_cli_in_both_ranges(converted_dir, pngs):
    from modeling_afine import AfineLoss

    folder, images = pngs
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "modeling_afine", "score", "d0.png", "d1.png", "ref.png", "--model", str(converted_dir), "--json", "-q"]
    res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    cli = json.loads(res.stdout)
    # What a training loop has: the PNGs decoded to uint8, /255, batched, the reference shared ([1, 3, H, W]).
    pred01 = torch.cat([_tensor(np.asarray(Image.open(folder / n).convert("RGB"))) for n in ("d0.png", "d1.png")])
    ref01 = _tensor(np.asarray(Image.open(folder / "ref.png").convert("RGB")))
    for input_range, to_range in (((0, 1), lambda t: t), ((-1, 1), lambda t: t * 2 - 1)):
        loss = AfineLoss(converted_dir, reduction="none", input_range=input_range)
        for output in OUTPUTS:
            loss.output = output
            got = loss(to_range(pred01), to_range(ref01))
            want = torch.tensor([row[output] for row in cli])
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-6, msg=f"{output} {input_range}")
        # the mean over the batch is the default reduction
        mean = AfineLoss(loss.model, output="score", input_range=input_range)(to_range(pred01), to_range(ref01))
        assert mean.shape == () and float(mean) == pytest.approx(np.mean([row["score"] for row in cli]), abs=2e-5)


def test_values_equal_the_scorer_with_per_image_targets_and_reductions(loss_fn, photos, model):
    from modeling_afine import AfineScorer

    ref = photos["rocket_130x75"]
    dis = [degrade(ref, 2, 4.0, seed=3), degrade(ref, 3, 0.0)]
    refs = [ref, degrade(ref, 2, 0.0)]
    pred, target = torch.cat([_tensor(d) for d in dis]), torch.cat([_tensor(r) for r in refs])
    want = AfineScorer(model, num_workers=0).score(dis, refs)
    torch.testing.assert_close(loss_fn(pred, target), want.score, atol=2e-5, rtol=0)
    values = loss_fn(pred, target)
    loss_fn.reduction = "sum"
    try:
        torch.testing.assert_close(loss_fn(pred, target), values.sum())
    finally:
        loss_fn.reduction = "none"


def test_naturalness_distorted_needs_no_target(converted_dir, photos):
    from modeling_afine import AfineLoss, AfineScorer

    img = photos["chelsea_96x160"]
    loss = AfineLoss(converted_dir, output="naturalness_distorted", reduction="none")
    want = AfineScorer(loss.model, num_workers=0).naturalness([img])
    torch.testing.assert_close(loss(_tensor(img)), want, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ gradients


def _reference_outputs(parts: dict, dis01: torch.Tensor, ref01: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official math through tests/modeling/reference_afine.py, differentiable in ``dis01`` (batch 1)."""
    dis, ref = (dis01 - MEAN.to(dis01)) / STD.to(dis01), (ref01 - MEAN.to(ref01)) / STD.to(ref01)
    h, w = dis.shape[-2:]
    size = (-(-h // 32) * 32, -(-w // 32) * 32)
    if size != (h, w):
        dis = F.interpolate(dis, size=size, mode="bicubic", align_corners=False)
        ref = F.interpolate(ref, size=size, mode="bicubic", align_corners=False)
    clip = parts["finetuned_clip"]
    fd, fr = clip_features(clip, dis, HEADS), clip_features(clip, ref, HEADS)
    ns, fs, k = parts["natural_scale"], parts["fidelity_scale"], parts["adapter"]["k"]

    def logistic(x, y1, y2, y3, y4):
        return (y1 - y2) / (1 + torch.exp(-(x - y3) / (abs(y4) + 1e-10))) + y2

    n_dis = logistic(natural_raw(parts["natural"], dis, fd), 2, -2, ns["yita3"], ns["yita4"])
    n_ref = logistic(natural_raw(parts["natural"], ref, fr), 2, -2, ns["yita3"], ns["yita4"])
    d = fidelity_raw(parts["fidelity"], dis, ref, fd, fr)
    f = logistic(d, 2, -2, fs["yita3"].clamp(0.05, 0.95), fs["yita4"].clamp(0.01, 0.70))
    a = torch.exp(F.softplus(k) * (n_ref - n_dis)) * n_dis + f
    return {"score": logistic(a, 100, 0, -1.9710, -2.3734), "score_raw": a, "fidelity": f, "naturalness_distorted": n_dis}


def test_gradient_matches_autograd_through_the_reference_implementation(loss_fn, official_parts, photos):
    from modeling_afine import AfineLoss

    ref8 = photos["coffee_70x100"]
    pred0 = _tensor(degrade(ref8, 2, 6.0, seed=2))
    ref = _tensor(ref8)
    y = pred0.clone().requires_grad_()
    reference = _reference_outputs(official_parts, y, ref)
    for output in ("score", "score_raw", "fidelity", "naturalness_distorted"):
        (want,) = torch.autograd.grad(reference[output].sum(), y, retain_graph=True)
        x = pred0.clone().requires_grad_()
        AfineLoss(loss_fn.model, output=output)(x, ref).backward()
        assert want.abs().max() > 0, output
        assert float(F.cosine_similarity(x.grad.flatten(), want.flatten(), dim=0)) > 0.9999, output
        torch.testing.assert_close(x.grad, want, atol=1e-4 * float(want.abs().max()), rtol=1e-3, msg=output)


@pytest.mark.parametrize("output", ["score", "fidelity", "score_raw"])
def test_gradient_matches_finite_differences_float64(model64, photos, output):
    from modeling_afine import AfineLoss

    loss = AfineLoss(model64, output=output, reduction="sum", input_range=(-1, 1))
    ref8 = photos["coffee_70x100"][:40, :50]  # stretched to 64x64
    ref = _tensor(ref8, torch.float64) * 2 - 1
    pred0 = torch.cat([_tensor(degrade(ref8, 2, 6.0, seed=s), torch.float64) for s in (4, 5)]) * 2 - 1
    x = pred0.clone().requires_grad_()
    loss(x, ref).backward()
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):
        direction = torch.randn(pred0.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (loss(pred0 + eps * direction, ref) - loss(pred0 - eps * direction, ref)) / (2 * eps)
        analytic = (x.grad * direction).sum()
        assert float(analytic) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)


def test_processor_keeps_the_graph_for_tensor_inputs(model, processor, photos):
    from modeling_afine import AfineLoss

    ref8 = photos["coffee_70x100"]
    pred0, ref = _tensor(degrade(ref8, 2, 6.0, seed=2))[0], _tensor(ref8)[0]
    x = pred0.clone().requires_grad_()
    model(**processor(x, ref)).score.sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    y = pred0[None].clone().requires_grad_()
    AfineLoss(model, output="score")(y, ref[None]).backward()
    torch.testing.assert_close(x.grad, y.grad[0], atol=1e-5 * float(y.grad.abs().max()), rtol=1e-4)


# ------------------------------------------------------------------------------------------------ module behaviour


class _Restorer(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.criterion = loss


def test_frozen_outside_the_module_tree_and_always_eval(converted_dir):
    from modeling_afine import AfineLoss, AfineModel

    loss = AfineLoss(converted_dir)
    assert isinstance(loss.model, AfineModel)
    assert loss.model.num_parameters() > 0 and not any(p.requires_grad for p in loss.model.parameters())
    own = list(loss.parameters())
    assert len(own) == len(list(loss.model.parameters())) and not any(p.requires_grad for p in own)
    assert loss.state_dict() == {}
    loss.requires_grad_(True)
    assert not any(p.requires_grad for p in loss.parameters())
    parent = _Restorer(loss)
    assert set(parent.state_dict()) == {"net.weight", "net.bias"}
    assert len(list(parent.parameters())) == 2
    parent.train()
    assert not loss.training and not loss.model.training
    assert not any(m.training for m in loss.model.modules())
    parent.requires_grad_(True)
    assert not any(p.requires_grad for p in loss.model.parameters())
    # a parent's dtype change leaves A-FINE's precision alone; its state dict round-trips strictly
    parent.double()
    assert loss.model.fidelity_head.alpha.dtype == torch.float32
    parent.float()
    fresh = _Restorer(AfineLoss(loss.model))
    fresh.load_state_dict(parent.state_dict(), strict=True)


def test_inputs_are_never_modified_and_target_gets_no_gradient(loss_fn, photos):
    ref8 = photos["chelsea_96x160"]
    pred = _tensor(degrade(ref8, 2, 6.0, seed=7)).requires_grad_()
    target = _tensor(ref8).requires_grad_()
    before_p, before_t = pred.detach().clone(), target.detach().clone()
    loss_fn(pred, target).sum().backward()
    assert torch.equal(pred.detach(), before_p) and torch.equal(target.detach(), before_t)
    assert pred.grad is not None and target.grad is None


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    return sum(seen.values())


def test_reference_side_keeps_no_activations_and_checkpointing_saves_more(converted_dir, photos):
    from modeling_afine import AfineLoss

    loss = AfineLoss(converted_dir, output="score")
    ref8 = photos["astronaut_224"][:128, :128]
    pred0, ref = torch.cat([_tensor(degrade(ref8, 2, 6.0, seed=s)) for s in (1, 2)]), _tensor(ref8).expand(2, -1, -1, -1)
    ours = _saved_bytes(lambda: loss(pred0.clone().requires_grad_(), ref))
    # the same model with the reference in the graph too (what a naive loss does)
    model, proc = loss.model, loss.processor

    def both_in_graph():
        x, y = pred0.clone().requires_grad_(), ref.clone().requires_grad_()
        return model(proc.normalize_tensor(x), proc.normalize_tensor(y)).score.mean()

    naive = _saved_bytes(both_in_graph)
    assert ours < 0.8 * naive
    loss.gradient_checkpointing = True
    checkpointed = _saved_bytes(lambda: loss(pred0.clone().requires_grad_(), ref))
    assert checkpointed < 0.7 * ours  # 0.59 on the tiny model, where pixel-level terms weigh more


def test_gradient_checkpointing_gives_the_same_values_and_gradients(converted_dir, photos):
    from modeling_afine import AfineLoss

    ref8 = photos["coffee_70x100"]
    pred0, ref = _tensor(degrade(ref8, 2, 6.0, seed=2)), _tensor(ref8)
    results = []
    for ckpt in (False, True):
        x = pred0.clone().requires_grad_()
        value = AfineLoss(converted_dir, output="score", gradient_checkpointing=ckpt)(x, ref)
        value.backward()
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_on_cpu(loss_fn, photos):
    ref8 = photos["coffee_70x100"]
    pred0, ref = _tensor(degrade(ref8, 2, 6.0, seed=2)), _tensor(ref8)
    x = pred0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss_fn(x, ref)
    value.sum().backward()
    assert value.dtype == torch.float32 and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    assert torch.allclose(value.detach(), loss_fn(pred0, ref), atol=1.0)  # bf16 backbone, 0-100 scale


def test_adam_steps_lower_the_loss(converted_dir, photos):
    from modeling_afine import AfineLoss

    for output in ("fidelity", "score"):
        loss = AfineLoss(converted_dir, output=output)
        ref8 = photos["coffee_70x100"]
        x, ref = _tensor(degrade(ref8, 4, 8.0, seed=3)).requires_grad_(), _tensor(ref8)
        opt = torch.optim.Adam([x], lr=3e-4)
        values = []
        for _ in range(10):
            opt.zero_grad()
            value = loss(x, ref)
            value.backward()
            opt.step()
            values.append(float(value.detach()))
        assert float(loss(x.detach(), ref)) < values[0], (output, values)


def test_bad_arguments_are_one_line_errors(converted_dir, loss_fn):
    from modeling_afine import AfineLoss

    with pytest.raises(ValueError, match="output must be one of"):
        AfineLoss(loss_fn.model, output="mos")
    with pytest.raises(ValueError, match="reduction must be"):
        AfineLoss(loss_fn.model, reduction="max")
    with pytest.raises(ValueError, match=r"input_range must be \(0, 1\) or \(-1, 1\)"):
        AfineLoss(loss_fn.model, input_range=(0, 255))
    with pytest.raises(TypeError, match="must be an AfineModel"):
        AfineLoss(torch.nn.Linear(2, 2))
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="same size"):
        loss_fn(x, torch.rand(2, 3, 32, 64))
    with pytest.raises(ValueError, match="target batch must be 1"):
        loss_fn(x, torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        loss_fn(x[:, :1], x)
    with pytest.raises(ValueError, match="floating-point"):
        loss_fn((x * 255).to(torch.uint8), x)
    with pytest.raises(ValueError, match="needs a target"):
        loss_fn(x)
    meta = torch.empty(2, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match="pred is on meta but A-FINE is on cpu"):
        loss_fn(meta, meta)
    with pytest.raises(ValueError, match="target is on meta"):
        loss_fn(x, meta)
    with pytest.warns(UserWarning, match=r"input_range=\(-1, 1\)"):
        loss_fn(x, x * 2 - 1)
