"""The training losses of all three A-FINE stages (spec/afine.md §2.1).

* :func:`thurstone_probability` - Thurstone Case V: P(first better) = Phi((s2 - s1) / sqrt(2)) for scores
  where **lower is better** (every A-FINE quantity), unit variance per score.
* :func:`fidelity_loss` - the fidelity loss 1 - sqrt(p g + 1e-8) - sqrt((1 - p)(1 - g) + 1e-8).
"""

from __future__ import annotations

import math

import torch

__all__ = ["thurstone_probability", "fidelity_loss", "pair_loss", "FIDELITY_EPS"]

#: The constant inside both square roots of the official ``FidelityLoss``.
FIDELITY_EPS = 1e-8


def thurstone_probability(score1: torch.Tensor, score2: torch.Tensor) -> torch.Tensor:
    """P(image 1 better than image 2) = Phi((score2 - score1) / sqrt(2)), in (0, 1).

    Scores are lower-is-better: ``score1 < score2`` gives p > 0.5; equal scores give exactly 0.5.
    """
    return torch.special.ndtr((score2 - score1) / math.sqrt(2.0))


def fidelity_loss(p: torch.Tensor, g: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Fidelity loss between predicted probabilities ``p`` and labels ``g`` (both in [0, 1]).

    ``1 - sqrt(p g + 1e-8) - sqrt((1 - p)(1 - g) + 1e-8)``, about 0 when p == g in {0, 1}, averaged over
    elements for ``reduction="mean"`` (``"sum"`` and ``"none"`` also accepted).
    """
    g = g.to(p.dtype)
    loss = 1 - torch.sqrt(p * g + FIDELITY_EPS) - torch.sqrt((1 - p) * (1 - g) + FIDELITY_EPS)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def pair_loss(score1: torch.Tensor, score2: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-element fidelity loss of the Thurstone probability of two lower-is-better scores against ``g``."""
    return fidelity_loss(thurstone_probability(score1, score2), g, reduction="none")
