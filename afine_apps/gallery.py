"""Rank a gallery: N candidates against one reference, the reference encoded once (lower score = better)."""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from .launching import load_upload
from .pair import FIELDS, check_same_size

__all__ = ["rank_gallery", "ranking_csv", "COLUMNS"]

COLUMNS = ("rank", "name") + FIELDS


def _display_name(source, index: int) -> str:
    path = source.get("path") if isinstance(source, dict) else getattr(source, "name", source)
    if isinstance(path, (str, os.PathLike)):
        return os.path.basename(str(path))
    return f"candidate {index + 1}"


def rank_gallery(scorer, candidates: Sequence, reference, resize_reference: bool = False,
                 names: Sequence[str] | None = None) -> list[dict]:
    """Score every candidate against the one ``reference`` and sort them best first.

    Args:
        candidates: file paths (or PIL images) of the N images under test.
        reference: the reference they are all compared with; loaded once and, per candidate size, encoded once
            (``AfineScorer.score`` with a shared reference).
        names: display names (default: the file names).

    Returns:
        One dict per candidate, sorted by ``score`` ascending (lower is better; ties keep upload order), with
        ``rank`` (1 = best), ``name``, ``index`` (position in ``candidates``) and the five A-FINE outputs.

    Raises:
        ValueError: no candidates, no reference, or a size mismatch without ``resize_reference``;
        ImageLoadError: a file that cannot be read (the message names it).
    """
    candidates = list(candidates or [])
    if not candidates:
        raise ValueError("Please upload at least one candidate image.")
    ref = load_upload(reference, "reference")
    images = [load_upload(c, f"candidate {i + 1}") for i, c in enumerate(candidates)]
    labels = list(names) if names is not None else [_display_name(c, i) for i, c in enumerate(candidates)]
    if not resize_reference:
        for label, image in zip(labels, images):
            check_same_size(image, ref, f"candidate '{label}'")
    out = scorer.score(images, ref, resize_reference=bool(resize_reference))
    rows = [{"index": i, "name": labels[i], **{f: float(getattr(out, f)[i]) for f in FIELDS}}
            for i in range(len(images))]
    rows.sort(key=lambda r: (r["score"], r["score_raw"], r["index"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def ranking_csv(rows: Sequence[dict]) -> str:
    """The ranking as CSV text with the header ``rank,name,score,score_raw,fidelity,...`` (full precision)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row["rank"], row["name"]] + [repr(row[f]) for f in FIELDS])
    return buf.getvalue()
