"""Agreement between metric scores and human judgements: 2AFC accuracy, SRCC, PLCC, KRCC.

This is the one metrics module of the project; evaluation code and tests use it.

Directions. Human labels and dataset MOS are **higher = better**. Metric scores can go either way:
A-FINE (every output), LPIPS and DISTS are **lower = better**; PSNR and SSIM are higher = better.
Each function that needs it takes ``lower_is_better`` (default ``True``, the A-FINE convention).

* :func:`two_afc_accuracy` - the only metric of the official evaluation (spec section 4).
* :func:`srcc`, :func:`krcc`, :func:`plcc` - correlations with MOS, sign-corrected so that a metric in
  perfect agreement with MOS scores 1 whatever its direction.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import numpy as np

__all__ = [
    "two_afc_accuracy",
    "two_afc_correct",
    "srcc",
    "krcc",
    "plcc",
    "logistic4",
    "fit_logistic4",
]

ArrayLike = Union[Sequence[float], np.ndarray]


def _vec(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


def two_afc_correct(
    scores1: ArrayLike,
    scores2: ArrayLike,
    g: ArrayLike,
    *,
    lower_is_better: bool = True,
    delta: float = 0.0,
) -> np.ndarray:
    """Per-pair correctness (bool array, shape [n]) of the official 2AFC rule.

    Args:
        scores1, scores2: metric scores of the first and second image of each pair, shape [n]. For A-FINE
            these are the (unscaled or 0-100) scores of ``(img1, ref)`` and ``(img2, ref)``.
        g: human label per pair, shape [n]: 1 = first image better, 0 = second better, 0.5 = tie.
        lower_is_better: direction of the *metric* (True for A-FINE, LPIPS, DISTS).
        delta: indifference margin, >= 0. The official evaluation uses 0.

    A pair is correct when the metric prefers the first image by more than ``delta`` and ``g == 1``,
    prefers the second by more than ``delta`` and ``g == 0``, or the scores differ by at most ``delta``
    and ``g == 0.5``. At ``delta = 0`` a tie pair is only correct when the two scores are exactly equal
    (official behaviour, spec sections 4 and 6.14); tie pairs stay in the denominator. Any other ``g``
    value (soft labels) is never counted correct.
    """
    s1, s2, gg = _vec(scores1, "scores1"), _vec(scores2, "scores2"), _vec(g, "g")
    if not (len(s1) == len(s2) == len(gg)):
        raise ValueError(f"length mismatch: scores1 {len(s1)}, scores2 {len(s2)}, g {len(gg)}")
    if delta < 0:
        raise ValueError("delta must be >= 0")
    first_better = (s1 < s2) if lower_is_better else (s1 > s2)
    second_better = (s1 > s2) if lower_is_better else (s1 < s2)
    apart = np.abs(s1 - s2) > delta
    return (first_better & apart & (gg == 1)) | (second_better & apart & (gg == 0)) | (~apart & (gg == 0.5))


def two_afc_accuracy(
    scores1: ArrayLike,
    scores2: ArrayLike,
    g: ArrayLike,
    *,
    lower_is_better: bool = True,
    delta: float = 0.0,
    exclude_ties: bool = False,
) -> float:
    """2AFC accuracy in [0, 1]: the fraction of pairs where the metric agrees with the human label.

    See :func:`two_afc_correct` for the rule and arguments. With ``exclude_ties=True`` pairs with
    ``g == 0.5`` are left out of numerator and denominator (not the official protocol, which keeps them).
    Returns NaN for an empty input.
    """
    correct = two_afc_correct(scores1, scores2, g, lower_is_better=lower_is_better, delta=delta)
    if exclude_ties:
        keep = _vec(g, "g") != 0.5
        correct = correct[keep]
    if correct.size == 0:
        return float("nan")
    return float(correct.mean())


def _signed(scores: np.ndarray, lower_is_better: bool) -> np.ndarray:
    return -scores if lower_is_better else scores


def srcc(scores: ArrayLike, mos: ArrayLike, *, lower_is_better: bool = True) -> float:
    """Spearman rank correlation in [-1, 1] between metric ``scores`` and ``mos`` (higher = better).

    The sign is corrected for the metric direction: 1 means the metric orders images exactly as MOS.
    Ties get average ranks. NaN if either input is constant.
    """
    from scipy import stats

    s, m = _vec(scores, "scores"), _vec(mos, "mos")
    if len(s) != len(m):
        raise ValueError(f"length mismatch: scores {len(s)}, mos {len(m)}")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(stats.spearmanr(_signed(s, lower_is_better), m).statistic)


def krcc(scores: ArrayLike, mos: ArrayLike, *, lower_is_better: bool = True) -> float:
    """Kendall rank correlation (tau-b) in [-1, 1], sign-corrected like :func:`srcc`."""
    from scipy import stats

    s, m = _vec(scores, "scores"), _vec(mos, "mos")
    if len(s) != len(m):
        raise ValueError(f"length mismatch: scores {len(s)}, mos {len(m)}")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(stats.kendalltau(_signed(s, lower_is_better), m).statistic)


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Four-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (VQEG-style mapping)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500, 500)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic4(scores: ArrayLike, mos: ArrayLike) -> tuple[float, float, float, float]:
    """Least-squares fit of :func:`logistic4` mapping ``scores`` to ``mos``; returns (b1, b2, b3, b4).

    Deterministic: starts from b1 = max(mos), b2 = min(mos) (swapped when scores and MOS are negatively
    correlated, i.e. lower-is-better metrics), b3 in {mean, median}(scores), b4 in {1/4, 1/2, 1} x
    std(scores), and keeps the fit with the smallest squared error.
    """
    from scipy import optimize

    s, m = _vec(scores, "scores"), _vec(mos, "mos")
    hi, lo = (float(m.min()), float(m.max())) if np.corrcoef(s, m)[0, 1] < 0 else (float(m.max()), float(m.min()))
    spread = float(s.std()) or 1.0
    best, best_sse = None, np.inf
    for b4 in (spread / 4, spread / 2, spread):
        for b3 in (float(s.mean()), float(np.median(s))):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optimize.OptimizeWarning)
                    params, _ = optimize.curve_fit(logistic4, s, m, p0=[hi, lo, b3, b4], maxfev=20000)
            except RuntimeError:
                continue
            sse = float(np.sum((logistic4(s, *params) - m) ** 2))
            if sse < best_sse:
                best, best_sse = params, sse
    if best is None:
        raise RuntimeError("logistic fit did not converge")
    return tuple(float(p) for p in best)  # type: ignore[return-value]


def plcc(
    scores: ArrayLike,
    mos: ArrayLike,
    *,
    lower_is_better: bool = True,
    logistic: bool = False,
) -> float:
    """Pearson linear correlation in [-1, 1] between metric ``scores`` and ``mos`` (higher = better).

    With ``logistic=True`` the scores are first mapped through a fitted :func:`logistic4` (the usual
    VQEG protocol); the mapped scores then follow MOS, so no sign correction is needed. Without it the
    sign is corrected for the metric direction. If the logistic fit fails to converge, falls back to the
    linear (sign-corrected) PLCC. NaN if either input is constant.
    """
    s, m = _vec(scores, "scores"), _vec(mos, "mos")
    if len(s) != len(m):
        raise ValueError(f"length mismatch: scores {len(s)}, mos {len(m)}")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(m) == 0:
        return float("nan")
    x: Optional[np.ndarray] = None
    if logistic and len(s) >= 5:
        try:
            x = logistic4(s, *fit_logistic4(s, m))
        except (RuntimeError, ValueError):
            x = None
        if x is not None and np.ptp(x) == 0:
            x = None
    if x is None:
        x = _signed(s, lower_is_better)
    return float(np.corrcoef(x, m)[0, 1])
