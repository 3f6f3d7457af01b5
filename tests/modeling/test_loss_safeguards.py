"""The naturalness hazard of issue 16 and the recommended safeguard, on a tiny model with the official k = 5.

Starting from an output close to its reference (where a converged restoration net ends up), a few Adam steps
on the pixels with ``score`` or ``score_raw`` (even with an L1 term) push the naturalness term to its floor:
score 0, score_raw in the thousands below zero, fidelity and MSE worse. The recommended default
(``fidelity``, paired with L1) lowers fidelity and MSE and leaves score_raw bounded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .conftest import _photo


@pytest.fixture(scope="module")
def k5_model(converted_dir):
    """The tiny test model with the adapter's k set to 5, the official initialisation (softplus(5) = 5.0067)."""
    from modeling_afine import AfineModel

    model = AfineModel.from_pretrained(converted_dir).eval()
    with torch.no_grad():
        model.adapter.k.fill_(5.0)
    return model


@pytest.fixture(scope="module")
def near_pair():
    img = _photo("astronaut")[100:196, 150:246]
    ref = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    return (ref + 0.01 * noise).clamp(0, 1), ref


def _optimise(model, output: str, pred0, ref, steps: int = 10, lr: float = 3e-4, l1_weight: float = 1.0):
    from modeling_afine import AfineLoss

    loss = AfineLoss(model, output=output)
    x = pred0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        value = loss(x, ref)
        if output == "score":
            value = value / 100  # the 0-100 scale brought to the L1's
        (value + l1_weight * F.l1_loss(x, ref)).backward()
        opt.step()
    with torch.no_grad():
        out = AfineLoss(model, output="score").outputs(x.detach(), ref)
    return {"score_raw": float(out.score_raw), "fidelity": float(out.fidelity), "mse": float(F.mse_loss(x.detach(), ref))}


def _start(model, pred0, ref):
    from modeling_afine import AfineLoss

    with torch.no_grad():
        out = AfineLoss(model).outputs(pred0, ref)
    return {"score_raw": float(out.score_raw), "fidelity": float(out.fidelity), "mse": float(F.mse_loss(pred0, ref))}


def test_recommended_setting_does_not_collapse(k5_model, near_pair):
    pred0, ref = near_pair
    start = _start(k5_model, pred0, ref)
    end = _optimise(k5_model, "fidelity", pred0, ref)  # the default output, with L1
    assert end["fidelity"] < start["fidelity"], (start, end)
    assert end["mse"] < start["mse"], (start, end)
    assert end["score_raw"] > -5, (start, end)  # bounded: no naturalness runaway


@pytest.mark.parametrize("output", ["score", "score_raw"])
def test_score_outputs_can_collapse_which_is_why_they_are_not_the_default(k5_model, near_pair, output):
    pred0, ref = near_pair
    start = _start(k5_model, pred0, ref)
    end = _optimise(k5_model, output, pred0, ref)
    assert end["score_raw"] < -1000 < start["score_raw"], (start, end)
    assert end["fidelity"] > start["fidelity"], (start, end)
