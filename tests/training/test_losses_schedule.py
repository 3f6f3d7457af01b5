"""The fidelity loss, the Thurstone probability and the cosine-restart schedule against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import fidelity_loss, pair_loss, thurstone_probability
from training.schedule import build_cosine_restart_scheduler, cosine_restart_lr, scale_periods


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_probability_equal_scores_is_half():
    s = torch.tensor([0.0, 3.7, -12.0])
    assert torch.equal(thurstone_probability(s, s), torch.full((3,), 0.5))


def test_probability_matches_phi_and_direction():
    s1, s2 = torch.tensor([0.2, 1.0]), torch.tensor([1.0, -0.5])
    p = thurstone_probability(s1, s2)
    expected = [_phi((1.0 - 0.2) / math.sqrt(2)), _phi((-0.5 - 1.0) / math.sqrt(2))]
    assert p.tolist() == pytest.approx(expected, abs=1e-7)
    assert p[0] > 0.5 > p[1]  # lower score = better = more likely preferred


def test_fidelity_loss_hand_computation():
    p = torch.tensor([0.3, 0.9, 0.5, 1.0])
    g = torch.tensor([1.0, 0.0, 0.5, 1.0])
    hand = [1 - math.sqrt(pi * gi + 1e-8) - math.sqrt((1 - pi) * (1 - gi) + 1e-8) for pi, gi in zip(p.tolist(), g.tolist())]
    assert fidelity_loss(p, g, reduction="none").tolist() == pytest.approx(hand, abs=1e-6)
    assert float(fidelity_loss(p, g)) == pytest.approx(sum(hand) / 4, abs=1e-6)
    assert float(fidelity_loss(p, g, reduction="sum")) == pytest.approx(sum(hand), abs=1e-6)
    # the tie case of spec §6.14: about -2e-8 at p = g = 0.5
    assert hand[2] == pytest.approx(-2e-8, abs=1e-9)


def test_pair_loss_gradient_direction():
    s1 = torch.tensor([0.5], requires_grad=True)
    s2 = torch.tensor([0.4], requires_grad=True)
    pair_loss(s1, s2, torch.tensor([1.0])).sum().backward()
    # image 1 is labelled better: descending the loss lowers s1 and raises s2
    assert s1.grad.item() > 0 and s2.grad.item() < 0
    s1.grad = s2.grad = None
    pair_loss(s1, s2, torch.tensor([0.0])).sum().backward()
    assert s1.grad.item() < 0 and s2.grad.item() > 0


def test_cosine_restart_hand_values():
    periods, weights, base, eta = [10, 10, 10, 10], [1, 0.5, 0.5, 0.5], 1.0, 0.0
    assert cosine_restart_lr(0, base, periods, weights, eta) == pytest.approx(1.0)
    assert cosine_restart_lr(5, base, periods, weights, eta) == pytest.approx(0.5)
    assert cosine_restart_lr(10, base, periods, weights, eta) == pytest.approx(0.0, abs=1e-12)
    # restart: the second cycle starts at half the base (BasicSR's first position is t - R = 1)
    assert cosine_restart_lr(11, base, periods, weights, eta) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert cosine_restart_lr(15, base, periods, weights, eta) == pytest.approx(0.25)
    assert cosine_restart_lr(40, base, periods, weights, eta) == pytest.approx(0.0, abs=1e-12)
    eta = 1e-8
    assert cosine_restart_lr(10, 5e-6, periods, weights, eta) == pytest.approx(1e-8)


def test_scale_periods():
    assert scale_periods([10000] * 4, 40000) == [10000] * 4
    assert scale_periods([10000] * 4, 100) == [25] * 4
    out = scale_periods([10000] * 4, 10)
    assert sum(out) == 10 and len(out) == 4
    assert scale_periods([10000] * 4, 2) == [2]


def test_scheduler_per_group_lrs():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-6}])
    sched = build_cosine_restart_scheduler(opt, [4, 4], [1, 0.5], 1e-8)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for t, lrs in enumerate(seen):
        assert lrs[0] == pytest.approx(cosine_restart_lr(t, 1e-3, [4, 4], [1, 0.5], 1e-8), rel=1e-9)
        assert lrs[1] == pytest.approx(cosine_restart_lr(t, 5e-6, [4, 4], [1, 0.5], 1e-8), rel=1e-9)
