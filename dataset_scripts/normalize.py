"""MOS normalisation (spec section 3.5).

A-FINE's fitting scripts turn dataset MOS (higher = better) into targets on A-FINE's scale
(**lower = better**):

* ``afine_nr`` preset (``normalize_PIPAL_mos.py``): global min-max over all input lines to [-2, 2], then
  negated: m' = -((m - min) / (max - min) * 4 - 2). Output lines ``dist,ref,m'``.
* ``sriqa`` preset (``normalize_SRIQA_mos.py``): global min-max to [0, 100], then 100 - x. Output lines
  ``name,ref,score`` with ``ref = {prefix}_Original.png``.

Input files are read in sorted file-name order (the official scripts used ``os.listdir`` order), lines
in file order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .formats import LabelFormatError, read_classic_mos_file, read_sriqa_mos_file

__all__ = ["rescale", "normalize_classic_mos_dir", "normalize_sriqa_mos_dir", "PRESETS"]

PathLike = Union[str, os.PathLike]

#: name -> (new_min, new_max, flip). ``flip`` turns higher-is-better MOS into lower-is-better targets.
PRESETS: dict[str, tuple[float, float, bool]] = {"afine_nr": (-2.0, 2.0, True), "sriqa": (0.0, 100.0, True)}


def rescale(values: Sequence[float], new_min: float, new_max: float, *, flip: bool = True) -> np.ndarray:
    """Global min-max rescale of ``values`` to [new_min, new_max]; with ``flip`` the direction is reversed.

    ``flip`` follows the official formulas: for the symmetric [-2, 2] range it negates the result, for
    other ranges it maps x -> new_max + new_min - x (the official ``100 - x`` for [0, 100]). Both send the
    best MOS to ``new_min`` (lower = better). Raises ``ValueError`` if all values are equal.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no MOS values to normalise")
    lo, hi = arr.min(), arr.max()
    if hi == lo:
        raise ValueError("all MOS values are equal; cannot min-max normalise")
    scaled = (arr - lo) / (hi - lo) * (new_max - new_min) + new_min
    if flip:
        scaled = (new_max + new_min) - scaled
    return scaled


def _txt_files(folder: PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt")
    if not files:
        raise LabelFormatError(folder, "no .txt MOS files found")
    return files


def normalize_classic_mos_dir(
    mos_dir: PathLike,
    out_file: PathLike,
    *,
    new_min: float = -2.0,
    new_max: float = 2.0,
    flip: bool = True,
    lowercase: bool = False,
) -> int:
    """Normalise every ``dist,ref,MOS[,var]`` line in ``mos_dir/*.txt``; write ``dist,ref,m'`` lines.

    Default is the ``afine_nr`` preset ([-2, 2], lower = better). Returns the number of lines written.
    """
    records = [r for f in _txt_files(mos_dir) for r in read_classic_mos_file(f, lowercase=lowercase)]
    values = rescale([r.mos for r in records], new_min, new_max, flip=flip)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8", newline="\n") as fh:
        for r, v in zip(records, values):
            fh.write(f"{r.image_name},{r.reference_name},{float(v)}\n")
    return len(records)


def normalize_sriqa_mos_dir(
    mos_dir: PathLike,
    out_file: PathLike,
    *,
    new_min: float = 0.0,
    new_max: float = 100.0,
    flip: bool = True,
) -> int:
    """Normalise SRIQA-Bench ``MOS*/{prefix}.txt`` files; write ``name,{prefix}_Original.png,score`` lines.

    Default is the ``sriqa`` preset (100 - global min-max to [0, 100], lower = better).
    """
    rows = []
    for f in _txt_files(mos_dir):
        ref = f"{f.stem}_Original.png"
        rows += [(name, ref, mos) for name, mos in read_sriqa_mos_file(f)]
    values = rescale([r[2] for r in rows], new_min, new_max, flip=flip)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8", newline="\n") as fh:
        for (name, ref, _), v in zip(rows, values):
            fh.write(f"{name},{ref},{float(v)}\n")
    return len(rows)
