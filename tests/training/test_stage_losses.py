"""The stage losses wired to the right scores and labels, checked against the model's public outputs."""

from __future__ import annotations

import math

import pytest
import torch

from training.stages import StageModule

from .conftest import tiny_model


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _fid(p: float, g: float) -> float:
    return 1 - math.sqrt(p * g + 1e-8) - math.sqrt((1 - p) * (1 - g) + 1e-8)


def _batch():
    g = torch.Generator().manual_seed(0)
    sizes = [(32, 32), (64, 32), (32, 32)]
    batch = {k: [torch.randn(3, h, w, generator=g) for h, w in sizes] for k in ("img1", "img2", "ref")}
    batch["g12"] = torch.tensor([1.0, 0.0, 0.5])
    batch["g1ref"] = torch.tensor([0.0, 0.5, float("nan")])
    batch["g2ref"] = torch.tensor([0.0, 0.0, 1.0])
    return batch


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=7)
    with torch.no_grad():  # make N and the adapter vary between images
        m.natural_calibration.yita3.fill_(0.0)
        m.natural_calibration.yita4.fill_(0.05)
        m.adapter.k.fill_(0.3)
    return m


def test_stage_losses_match_hand_computation(model):
    batch = _batch()
    exp = {1: 0.0, 2: 0.0, 3: 0.0}
    with torch.no_grad():
        for i in range(3):
            x1, x2, r = (batch[k][i][None] for k in ("img1", "img2", "ref"))
            u1, u2, ur = (float(model.naturalness(x).naturalness_raw[0]) for x in (x1, x2, r))
            o1, o2 = model(x1, r), model(x2, r)
            g12, g1r, g2r = (float(batch[k][i]) for k in ("g12", "g1ref", "g2ref"))
            exp[1] += _fid(_phi((u2 - u1) / math.sqrt(2)), g12) + _fid(_phi((ur - u2) / math.sqrt(2)), g2r)
            if not math.isnan(g1r):
                exp[1] += _fid(_phi((ur - u1) / math.sqrt(2)), g1r)
            exp[2] += _fid(_phi((float(o2.fidelity_raw[0]) - float(o1.fidelity_raw[0])) / math.sqrt(2)), g12)
            exp[3] += _fid(_phi((float(o2.score_raw[0]) - float(o1.score_raw[0])) / math.sqrt(2)), g12)
    for stage in (1, 2, 3):
        for grouped in (True, False):
            with torch.no_grad():
                got = StageModule(model, stage, group_by_size=grouped)(batch)
            assert float(got["loss"]) == pytest.approx(exp[stage] / 3, rel=1e-4, abs=1e-6), (stage, grouped)
