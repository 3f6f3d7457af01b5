"""Cosine annealing with warm restarts, as BasicSR's ``CosineAnnealingRestartLR`` (spec/afine.md §2.1).

lr(t) = eta_min + w_i * 0.5 * (base - eta_min) * (1 + cos(pi * (t - R_i) / P_i)), where cycle i is the first
with t <= P_0 + ... + P_i, R_i the sum of the earlier periods and w_i its restart weight. ``t`` is the
number of scheduler steps taken; the training loop steps the scheduler after every optimizer step, so
iteration n (1-based) runs at lr(n - 1), as the official loop (which starts stepping at iteration 2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["cosine_restart_lr", "scale_periods", "build_cosine_restart_scheduler", "OFFICIAL_PERIODS",
           "OFFICIAL_RESTART_WEIGHTS", "OFFICIAL_ETA_MIN"]

OFFICIAL_PERIODS = (10000, 10000, 10000, 10000)
OFFICIAL_RESTART_WEIGHTS = (1.0, 0.5, 0.5, 0.5)
OFFICIAL_ETA_MIN = 1e-8


def cosine_restart_lr(step: int, base_lr: float, periods: Sequence[int], restart_weights: Sequence[float],
                      eta_min: float) -> float:
    """The learning rate after ``step`` scheduler steps. Past the last period the last cycle's end value holds."""
    if len(periods) != len(restart_weights) or not periods:
        raise ValueError("periods and restart_weights must be non-empty and of equal length")
    cumulative = 0
    for i, period in enumerate(periods):
        start = cumulative
        cumulative += int(period)
        if step <= cumulative or i == len(periods) - 1:
            pos = min(step - start, int(period))
            return eta_min + restart_weights[i] * 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * pos / int(period)))
    raise AssertionError("unreachable")


def scale_periods(periods: Sequence[int], total_steps: int) -> list[int]:
    """Rescale ``periods`` proportionally so they sum to ``total_steps`` (each at least 1).

    ``scale_periods([10000] * 4, 40000)`` is the official schedule; ``scale_periods([10000] * 4, 100)`` gives
    four 25-step cycles.
    """
    total = sum(int(p) for p in periods)
    if total_steps < len(periods):
        # too few steps for every cycle: one cycle over the whole run
        return [max(1, int(total_steps))]
    bounds = [round(total_steps * sum(periods[: i + 1]) / total) for i in range(len(periods))]
    out, prev = [], 0
    for b in bounds:
        out.append(max(1, b - prev))
        prev = b
    out[-1] += total_steps - sum(out)
    return out


def build_cosine_restart_scheduler(optimizer: torch.optim.Optimizer, periods: Sequence[int],
                                   restart_weights: Sequence[float], eta_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` reproducing :func:`cosine_restart_lr` for every parameter group's own initial lr."""
    periods = [int(p) for p in periods]
    weights = [float(w) for w in restart_weights]
    if len(weights) != len(periods):
        # scale_periods may have merged cycles: keep the first weights
        weights = weights[: len(periods)]
    lambdas = []
    for group in optimizer.param_groups:
        base = float(group.get("initial_lr", group["lr"]))

        def factor(step: int, base=base) -> float:
            return cosine_restart_lr(step, base, periods, weights, eta_min) / base if base > 0 else 0.0

        lambdas.append(factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
