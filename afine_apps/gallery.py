"""Rank a gallery: N candidates against one reference, the reference encoded once (lower score = better)."""

from __future__ import annotations

import csv
import io
import os
from typing import Optional, Sequence

from .launching import load_upload, probe_uploads
from .pair import FIELDS, check_same_size

__all__ = ["rank_gallery", "ranking_csv", "spreadsheet_text", "COLUMNS"]

COLUMNS = ("rank", "name") + FIELDS


def _display_name(source, index: int) -> str:
    path = source.get("path") if isinstance(source, dict) else getattr(source, "name", source)
    if isinstance(path, (str, os.PathLike)):
        return os.path.basename(str(path))
    return f"candidate {index + 1}"


def rank_gallery(scorer, candidates: Sequence, reference, resize_reference: bool = False,
                 names: Sequence[str] | None = None, *, max_images: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> list[dict]:
    """Score every candidate against the one ``reference`` and sort them best first.

    Args:
        candidates: file paths (or PIL images) of the N images under test.
        reference: the reference they are all compared with; loaded once and, per candidate size, encoded once
            (``AfineScorer.score`` with a shared reference).
        names: display names (default: the file names).
        max_images: most candidates accepted (default: no limit; the demo passes
            :func:`afine_apps.launching.max_gallery_images`), checked before anything is read.
        max_pixels: per-image pixel limit (default :func:`afine_apps.launching.max_pixels`), checked from every
            header before any image is decoded.

    Returns:
        One dict per candidate, sorted by ``score`` ascending (lower is better; ties keep upload order), with
        ``rank`` (1 = best), ``name``, ``index`` (position in ``candidates``) and the five A-FINE outputs.

    Raises:
        ValueError: no candidates, too many, no reference, or a size mismatch without ``resize_reference``;
        ImageLoadError: a file that cannot be read (the message names it).
    """
    candidates = list(candidates or [])
    if not candidates:
        raise ValueError("Please upload at least one candidate image.")
    if max_images is not None and len(candidates) > max_images:
        raise ValueError(f"Too many candidates: {len(candidates)} uploaded, at most {max_images} per ranking.")
    if reference is None or (isinstance(reference, str) and not reference):
        raise ValueError("Please upload the reference image.")
    probe_uploads([(reference, "reference")] + [(c, f"candidate {i + 1}") for i, c in enumerate(candidates)],
                  max_pixels)
    ref = load_upload(reference, "reference", limit=max_pixels)
    images = [load_upload(c, f"candidate {i + 1}", limit=max_pixels) for i, c in enumerate(candidates)]
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


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell made safe for spreadsheets: one starting with ``=``, ``+``, ``-``, ``@``, tab or CR would be
    run as a formula by Excel/LibreOffice/Sheets, so it gets a leading apostrophe (the usual convention, shown
    as text). Only for text cells: numbers (negative scores included) are written as numbers."""
    text = str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def ranking_csv(rows: Sequence[dict]) -> str:
    """The ranking as CSV text with the header ``rank,name,score,score_raw,fidelity,...`` (full precision).

    Names are text cells escaped against formula injection (:func:`spreadsheet_text`); the numbers are plain
    numbers (``repr`` of the float, e.g. ``-1.2345678``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # RFC 4180; a CR inside a name gets quoted
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([int(row["rank"]), spreadsheet_text(row["name"])] + [repr(float(row[f])) for f in FIELDS])
    return buf.getvalue()
