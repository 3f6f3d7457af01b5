"""Score method-output folders against a ground-truth folder from Python: per-pair records and the leaderboard.

:func:`score_methods` is what ``afine score M1_DIR M2_DIR ... GT_DIR`` runs, for a notebook::

    from modeling_afine import score_methods

    result = score_methods({"SwinIR": "out/swinir", "ESRGAN": "out/esrgan"}, "data/gt", strip_suffix="_SR")
    result.summary          # list of dicts, one per method, rank order (lower score is better)
    result.records          # list of dicts, one per pair (errors have an "error" field)
    result.leaderboard.comparisons   # pairwise win rates and Wilcoxon p-values

With ``as_dataframe=True`` ``records`` and ``summary`` are pandas DataFrames. Pairing is done by
:mod:`modeling_afine.folder_pairing` and the statistics by :mod:`modeling_afine.leaderboard`, exactly as in
the command line, and each ground truth is decoded and encoded once for all the methods scored against it.
This module imports torch only when :func:`score_methods` runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .folder_pairing import FolderPlan, pair_folders
from .leaderboard import Leaderboard, summarize

__all__ = ["RESULT_FIELDS", "pair_record", "shared_references", "unmatched_report", "MethodEvaluation", "score_methods"]

#: the numbers of one pair, all lower = better: score 0-100, score_raw, fidelity, naturalness terms in (-2, 2);
#: ``modeling_afine.modeling_afine.SCORE_FIELDS`` spelled out, because this module must not import torch
RESULT_FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


def pair_record(
    method: Optional[str],
    given: tuple[str, str],
    result: Any,
    *,
    image: Optional[str] = None,
    paths: Optional[tuple[str, str]] = None,
) -> dict[str, Any]:
    """The record of one pair: ``method``, [``image``], ``distorted``, ``reference``, then either the five
    :data:`RESULT_FIELDS` (floats) or ``error`` (the one-line message), then [``distorted_path``,
    ``reference_path``]. ``result``: the fields dict from :meth:`AfineScorer.iter_pairs` or an exception."""
    rec: dict[str, Any] = {"method": method}
    if image is not None:
        rec["image"] = image
    rec["distorted"], rec["reference"] = given
    if isinstance(result, BaseException):
        rec["error"] = str(result)
    else:
        rec.update({k: float(result[k]) for k in RESULT_FIELDS})
    if paths is not None:
        rec["distorted_path"], rec["reference_path"] = paths
    return rec


def shared_references(references: Sequence[str]) -> set[str]:
    """References named by more than one pair: encoded once and reused (decided on the whole input, so a
    pair's numbers never depend on how a job is split)."""
    counts: dict[str, int] = {}
    for r in references:
        counts[r] = counts.get(r, 0) + 1
    return {r for r, n in counts.items() if n > 1}


def unmatched_report(plan: FolderPlan) -> dict[str, Any]:
    """``{"outputs_without_ground_truth": {method: [paths]}, "ground_truths_without_output": {method: [keys]}}``,
    only the methods with something to report."""
    return {
        "outputs_without_ground_truth": {m: v for m, v in plan.unmatched_outputs.items() if v},
        "ground_truths_without_output": {m: v for m, v in plan.missing_outputs.items() if v},
    }


@dataclass
class MethodEvaluation:
    """What :func:`score_methods` returns.

    ``records``: one dict per pair (see :func:`pair_record`; ``image`` is the relative path without extension);
    ``summary``: the leaderboard rows (``Leaderboard.methods``); both pandas DataFrames with ``as_dataframe``.
    ``leaderboard``: the full :class:`~modeling_afine.leaderboard.Leaderboard` (comparisons, ``save()``).
    ``unmatched``: outputs without a ground truth and ground truths without an output, per method.
    """

    records: Any
    summary: Any
    leaderboard: Leaderboard
    unmatched: dict[str, Any] = field(default_factory=dict)


def score_methods(
    methods: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    ground_truth: str | os.PathLike,
    *,
    model: Any = None,
    scorer: Any = None,
    strip_suffix: Optional[str] = None,
    strip_regex: Optional[str] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    batch_size: int = 8,
    num_workers: Optional[int] = None,
    resize_reference: bool = False,
    seed: int = 0,
    n_resamples: int = 9999,
    as_dataframe: bool = False,
    progress: bool = False,
) -> MethodEvaluation:
    """Score every method folder against ``ground_truth`` and rank the methods (lower score is better).

    Args:
        methods: one folder, a list of folders (named by their base names), or ``{name: folder}``.
        ground_truth: the folder of ground truths; pairing is by relative path without extension, recursively.
        model: weights for a new :class:`~modeling_afine.scoring.AfineScorer` (see ``load_afine``), or an
            ``AfineModel``; ignored when ``scorer`` is given.
        strip_suffix, strip_regex: removed from output file stems before matching (see
            :mod:`modeling_afine.folder_pairing`).
        seed, n_resamples: of the bootstrap confidence intervals.
        as_dataframe: return ``records`` and ``summary`` as pandas DataFrames.

    Raises:
        modeling_afine.folder_pairing.PairingError: missing/empty folders, no images, nothing matched (before
        any model is loaded).
    """
    if isinstance(methods, Mapping):
        names, folders = list(methods), list(methods.values())
    elif isinstance(methods, (str, os.PathLike)):
        names, folders = None, [methods]
    else:
        names, folders = None, list(methods)
    plan = pair_folders(folders, ground_truth, strip_suffix=strip_suffix, strip_regex=strip_regex, names=names)
    if scorer is None:
        from .scoring import AfineScorer

        scorer = AfineScorer(model, device=device, dtype=dtype, batch_size=batch_size, num_workers=num_workers, progress=progress)
    shared = shared_references([p.reference for p in plan.pairs])
    results: dict[int, Any] = dict(
        scorer.iter_pairs([(p.distorted, p.reference) for p in plan.pairs], resize_reference=resize_reference, shared_references=shared)
    )
    records = [
        pair_record(p.method, (p.distorted, p.reference), results[i], image=p.image) for i, p in enumerate(plan.pairs)
    ]
    unmatched = unmatched_report(plan)
    board = summarize(records, seed=seed, n_resamples=n_resamples, unmatched=unmatched, method_order=plan.methods)
    summary: Any = board.methods
    out_records: Any = records
    if as_dataframe:
        import pandas as pd

        out_records = pd.DataFrame(records)
        summary = board.to_pandas()
    return MethodEvaluation(records=out_records, summary=summary, leaderboard=board, unmatched=unmatched)
