"""Fits of A-FINE's 4-parameter logistic calibration constants to MOS (spec/afine.md §3.5-3.6).

Each calibration is ``y = (high - low) * sigmoid((x - center) / |scale|) + low`` with a fixed range; only
``center`` and ``scale`` are fitted, by least squares (``scipy.optimize.curve_fit``, start
``[mean(x), std(x) / 4]``, ``maxfev`` 10000), as the official ``fit_beta_*.py`` scripts:

=============  =============================  ============  =====================================  ================
kind           x (model output, lower=better)  range         y (MOS normalised, lower = better)     official data
=============  =============================  ============  =====================================  ================
naturalness    raw naturalness u of the image  (2, -2)       -((m - min)/(max - min) * 4 - 2)       PIPAL train
fidelity       raw fidelity D(image, ref)      (2, -2)       same                                   (set by hand)
score          unscaled A(image, ref)          (100, 0)      100 - (m - min)/(max - min) * 100      SRIQA-Bench
=============  =============================  ============  =====================================  ================

The naturalness fit (after stage 1) gives the initial (γ3, γ4) of stage 3 (official 4.9592 / 21.5968);
the score fit (after stage 3) gives η3 / η4 of the 0-100 output (official -1.9710 / -2.3734). The official
fidelity initial values (0.5 / 0.15) were set by hand; the fit is offered for completeness.

Results are written as a small JSON (``{"kind", "<prefix>_center", "<prefix>_scale", "rmse", "n", ...}``) and
optionally into a model directory (:func:`apply_fit`): the config's ``natural_center_init`` /
``natural_scale_init``, ``fidelity_center_init`` / ``fidelity_scale_init`` or ``score_center`` /
``score_scale`` and, for the first two, the calibration parameters themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "KINDS",
    "CalibrationFit",
    "logistic_calibration",
    "normalize_mos_pm2",
    "normalize_mos_100",
    "fit_logistic_calibration",
    "fit_calibration",
    "apply_fit",
    "read_fit",
    "main",
]


@dataclass(frozen=True)
class _Kind:
    field: str  # AfineOutput field used as x
    high: float
    low: float
    normalize: str  # "pm2" or "100"
    prefix: str  # keys of the JSON / config attributes
    dataset: str
    config: str
    split: str


KINDS: dict[str, _Kind] = {
    "naturalness": _Kind("naturalness_distorted_raw", 2.0, -2.0, "pm2", "natural", "pipal", "mos", "train"),
    "fidelity": _Kind("fidelity_raw", 2.0, -2.0, "pm2", "fidelity", "pipal", "mos", "train"),
    "score": _Kind("score_raw", 100.0, 0.0, "100", "score", "sriqa_bench", "MOS", "test"),
}


@dataclass(frozen=True)
class CalibrationFit:
    """A fitted calibration: ``y = (high - low) * sigmoid((x - center) / |scale|) + low``."""

    center: float
    scale: float
    high: float
    low: float
    rmse: float
    n: int


def logistic_calibration(x, center: float, scale: float, high: float = 2.0, low: float = -2.0) -> np.ndarray:
    """``(high - low) / (1 + exp(-(x - center) / (|scale| + 1e-10))) + low`` (overflow-safe)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.clip((x - center) / (abs(scale) + 1e-10), -500, 500)
    return (high - low) / (1.0 + np.exp(-z)) + low


def normalize_mos_pm2(mos) -> np.ndarray:
    """Global min-max of MOS (higher = better) to [-2, 2] with **lower = better** (official PIPAL script)."""
    m = np.asarray(mos, dtype=np.float64)
    span = m.max() - m.min()
    if span == 0:
        raise ValueError("MOS values are all equal; nothing to fit")
    return -((m - m.min()) / span * 4 - 2)


def normalize_mos_100(mos) -> np.ndarray:
    """Global min-max of MOS (higher = better) to [0, 100], then 100 - x: **lower = better** (official SRIQA script)."""
    m = np.asarray(mos, dtype=np.float64)
    span = m.max() - m.min()
    if span == 0:
        raise ValueError("MOS values are all equal; nothing to fit")
    return 100.0 - (m - m.min()) / span * 100.0


def fit_logistic_calibration(x, y, *, high: float = 2.0, low: float = -2.0, p0: Optional[Sequence[float]] = None,
                             maxfev: int = 10000) -> CalibrationFit:
    """Least-squares fit of ``center`` and ``scale`` of :func:`logistic_calibration` to ``(x, y)``.

    Start ``p0 = [mean(x), std(x) / 4]`` as the official scripts. Raises ``RuntimeError`` if it does not converge.
    """
    from scipy import optimize

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"length mismatch: x {len(x)}, y {len(y)}")
    if len(x) < 3:
        raise ValueError(f"need at least 3 points to fit, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x or y contains NaN or infinity")
    if p0 is None:
        p0 = [float(x.mean()), float(x.std() / 4) or 1.0]

    def f(v, c, s):
        return logistic_calibration(v, c, s, high, low)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, _ = optimize.curve_fit(f, x, y, p0=list(p0), maxfev=int(maxfev))
    center, scale = (float(p) for p in params)
    rmse = float(np.sqrt(np.mean((f(x, center, scale) - y) ** 2)))
    return CalibrationFit(center, scale, float(high), float(low), rmse, int(len(x)))


def fit_calibration(kind: str, model, dataset: Optional[str], data_dir, *, config: Optional[str] = None,
                    split: Optional[str] = None, cache=None, device=None, batch_size: int = 8,
                    cache_dir: Optional[str] = None, progress: bool = False, scorer=None) -> dict:
    """Score every (image, reference) row of a MOS view and fit ``kind``'s calibration; returns the JSON dict."""
    from .evaluate import ScoreCache, score_pairs, view_records

    if kind not in KINDS:
        raise ValueError(f"unknown calibration {kind!r}; choose one of {', '.join(KINDS)}")
    spec = KINDS[kind]
    dataset = dataset or spec.dataset
    config = config or spec.config
    split = split or spec.split
    view_kind, rows = view_records(dataset, data_dir, config, split, cache_dir=cache_dir)
    if view_kind != "mos":
        raise ValueError(f"{dataset} view {config!r} is not a MOS table; the fit needs one (e.g. 'mos' or 'MOS')")
    model_id = str(model)
    if scorer is None:
        from modeling_afine.scoring import AfineScorer, resolve_model_dir

        model_id = os.path.abspath(resolve_model_dir(model)) if os.path.exists(str(model)) else str(model)
        scorer = AfineScorer(model, device=device, batch_size=batch_size)
    store = ScoreCache(cache, model_id)
    score_pairs(scorer, [(r["image"], r["reference"]) for r in rows], store, progress=progress)
    x = np.array([store.get(r["image"], r["reference"])[spec.field] for r in rows])
    mos = np.array([float(r["mos"]) for r in rows])
    y = normalize_mos_pm2(mos) if spec.normalize == "pm2" else normalize_mos_100(mos)
    fit = fit_logistic_calibration(x, y, high=spec.high, low=spec.low)
    return {"kind": kind, f"{spec.prefix}_center": fit.center, f"{spec.prefix}_scale": fit.scale,
            "range": [spec.high, spec.low], "rmse": fit.rmse, "n": fit.n, "x_field": spec.field,
            "model": model_id, "dataset": dataset, "config": config, "split": split}


def read_fit(path) -> dict:
    """Read a fit JSON written by :func:`fit_calibration` / the CLI."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration fit file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def apply_fit(model, fit: dict) -> None:
    """Write a fit into an :class:`~modeling_afine.AfineModel` (config, and parameters for N and F).

    A naturalness fit is also recorded as ``config.natural_calibration_fit`` (stage 3 refuses to start without one).
    """
    import torch

    applied = False
    with torch.no_grad():
        if "natural_center" in fit:
            model.natural_calibration.yita3.fill_(float(fit["natural_center"]))
            model.natural_calibration.yita4.fill_(float(fit["natural_scale"]))
            model.config.natural_center_init = float(fit["natural_center"])
            model.config.natural_scale_init = float(fit["natural_scale"])
            # what stage 3 checks before it starts from these values (the official flow refits them after stage 1)
            model.config.natural_calibration_fit = {k: fit[k] for k in ("natural_center", "natural_scale", "rmse", "n",
                                                                         "dataset", "config", "split") if k in fit}
            applied = True
        if "fidelity_center" in fit:
            model.fidelity_calibration.yita3.fill_(float(fit["fidelity_center"]))
            model.fidelity_calibration.yita4.fill_(float(fit["fidelity_scale"]))
            model.config.fidelity_center_init = float(fit["fidelity_center"])
            model.config.fidelity_scale_init = float(fit["fidelity_scale"])
            applied = True
        if "score_center" in fit:
            model.config.score_center = float(fit["score_center"])
            model.config.score_scale = float(fit["score_scale"])
            applied = True
    if not applied:
        raise ValueError("the fit has no natural_*, fidelity_* or score_* constants")


def build_parser(prog: str = "afine train fit-calibration") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Fit A-FINE calibration constants to MOS (spec §3.6).")
    p.add_argument("kind", choices=tuple(KINDS), help="naturalness (after stage 1), fidelity, or score (after stage 3)")
    p.add_argument("--model", required=True, help="model directory (or Hub id / afine.pth)")
    p.add_argument("--data-dir", required=True, help="dataset folder in its official layout")
    p.add_argument("--dataset", help="default: pipal (naturalness, fidelity) or sriqa_bench (score)")
    p.add_argument("--config", help="MOS view (default: mos, or MOS for sriqa_bench)")
    p.add_argument("--split", help="default: train (PIPAL) or test (SRIQA-Bench)")
    p.add_argument("--output", help="write the fit JSON here (default: print only)")
    p.add_argument("--cache", help="per-pair score cache (JSONL), shared with 'afine train evaluate'")
    p.add_argument("--write-model", metavar="DIR",
                   help="save the model with the fitted constants to DIR (may be the --model directory itself)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cache-dir", help="datasets cache directory")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "afine train fit-calibration") -> int:
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        from dataset_scripts.problems import DatasetCheckError
    except ImportError:  # pragma: no cover
        DatasetCheckError = ValueError  # type: ignore[misc,assignment]
    try:
        fit = fit_calibration(args.kind, args.model, args.dataset, args.data_dir, config=args.config, split=args.split,
                              cache=args.cache, device=args.device, batch_size=args.batch_size,
                              cache_dir=args.cache_dir, progress=not args.no_progress)
        print(json.dumps(fit, indent=2))
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(fit, indent=2) + "\n")
            print(f"fit written to {args.output}")
        if args.write_model:
            from modeling_afine.scoring import load_afine

            model, processor = load_afine(args.model, device="cpu")
            apply_fit(model, fit)
            model.save_pretrained(args.write_model)
            processor.save_pretrained(args.write_model)
            print(f"model with the fitted constants saved to {args.write_model}")
    except (DatasetCheckError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
