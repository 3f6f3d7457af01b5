"""Readers and writers for the official A-FINE text and JSON label formats.

Every reader raises :class:`LabelFormatError` naming the file (and line) and the problem. Writers produce
exactly the official layouts so that the original tools can read the files:

* DiffIQA label JSON (``labels/{A,B,C}/{01..06}/{ref}_{idx}.json``): ``Picture_AI`` {Name, File, ImageSize,
  Label}, ``picture_Original`` {..., Label null}, ``Time_cost`` {Start, End, Total}.
* SRIQA-Bench label JSON (``labels/{A..J}/{prefix}/{prefix}_{M1}_{M2}.json``): ``Picture_01`` and
  ``Picture_02`` with {Name, Label}, optional ``Time_cost``.
* Triplet files: 6 columns ``img1,img2,ref,g12,g1ref,g2ref`` (``Triplet.txt``) or 4 columns
  ``img1,img2,ref,g12`` (``TripletEachType/*.txt``).
* Classic MOS files ``{Split}/MOS/{ref}.txt``: ``dist,ref,MOS`` (PIPAL, TID2013) or ``dist,ref,MOS,var``
  (KADID-10k); MOS higher = better.
* SRIQA-Bench MOS files ``MOS*/{prefix}.txt``: ``name,score`` (or space separated), 0-100, higher = better.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .schema import LABELS, MosRecord, TripletRecord

__all__ = [
    "LabelFormatError",
    "DiffIQALabel",
    "SRIQALabel",
    "read_diffiqa_label",
    "write_diffiqa_label",
    "read_sriqa_label",
    "write_sriqa_label",
    "read_triplet_file",
    "write_triplet_file",
    "read_classic_mos_file",
    "write_classic_mos_file",
    "read_sriqa_mos_file",
    "write_sriqa_mos_file",
]

PathLike = Union[str, os.PathLike]


def _write_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers never see a
    half-written label, and the folder's mtime changes, which the builders' cache fingerprint relies on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class LabelFormatError(ValueError):
    """A label, MOS or triplet file is malformed. ``path`` names the file; the message says what is wrong."""

    def __init__(self, path: PathLike, message: str, line: Optional[int] = None):
        self.path = str(path)
        self.line = line
        self.problem = message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def _load_json(path: PathLike) -> dict:
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise LabelFormatError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelFormatError(path, f"not valid JSON ({exc})") from None
    except OSError as exc:
        raise LabelFormatError(path, f"cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise LabelFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _section(data: dict, path: PathLike, *keys: str) -> dict:
    for key in keys:
        if key in data:
            value = data[key]
            if not isinstance(value, dict):
                raise LabelFormatError(path, f"{key!r} must be an object")
            return value
    raise LabelFormatError(path, f"missing key {keys[0]!r}")


def _label(section: dict, path: PathLike, where: str) -> str:
    if "Label" not in section:
        raise LabelFormatError(path, f"{where} has no 'Label'")
    label = section["Label"]
    if label not in LABELS:
        raise LabelFormatError(path, f"{where}.Label is {label!r}, expected one of {', '.join(LABELS)}")
    return label


def _name(section: dict, path: PathLike, where: str) -> str:
    name = section.get("Name")
    if not isinstance(name, str) or not name:
        raise LabelFormatError(path, f"{where} has no valid 'Name'")
    return name


def _timing(data: dict) -> tuple[Optional[str], Optional[str], Optional[float]]:
    t = data.get("Time_cost")
    if not isinstance(t, dict):
        return None, None, None
    total = t.get("Total")
    try:
        total_f = float(total) if total is not None else None
    except (TypeError, ValueError):
        total_f = None
    start, end = t.get("Start"), t.get("End")
    return (str(start) if start is not None else None, str(end) if end is not None else None, total_f)


@dataclass(frozen=True)
class DiffIQALabel:
    """One DiffIQA judgement: ``label`` compares ``enhanced_name`` with ``reference_name``.

    Positive = enhanced better than reference, Similar, Negative = enhanced worse.
    """

    enhanced_name: str
    reference_name: str
    label: str
    start: Optional[str] = None
    end: Optional[str] = None
    time_total: Optional[float] = None


def read_diffiqa_label(path: PathLike) -> DiffIQALabel:
    """Read and validate one DiffIQA label JSON."""
    data = _load_json(path)
    ai = _section(data, path, "Picture_AI")
    orig = _section(data, path, "picture_Original", "Picture_Original")
    label = _label(ai, path, "Picture_AI")
    start, end, total = _timing(data)
    return DiffIQALabel(_name(ai, path, "Picture_AI"), _name(orig, path, "picture_Original"), label, start, end, total)


def write_diffiqa_label(
    path: PathLike,
    enhanced_name: str,
    reference_name: str,
    label: str,
    *,
    variant: str,
    start: str = "2024-05-08 19:34:49",
    end: str = "2024-05-08 19:34:50",
    total: float = 1.5,
) -> None:
    """Write a DiffIQA label JSON in the official schema."""
    data = {
        "Picture_AI": {"Name": enhanced_name, "File": variant, "ImageSize": [], "Label": label},
        "picture_Original": {"Name": reference_name, "File": "Original", "ImageSize": [], "Label": None},
        "Time_cost": {"Start": start, "End": end, "Total": total},
    }
    _write_atomic(path, json.dumps(data, indent=4))


@dataclass(frozen=True)
class SRIQALabel:
    """One SRIQA-Bench judgement of ``name1`` vs ``name2``; each label is the picture's own verdict.

    The picture with the higher label (Positive > Similar > Negative) is preferred; equal labels = tie.
    """

    name1: str
    name2: str
    label1: str
    label2: str
    start: Optional[str] = None
    end: Optional[str] = None
    time_total: Optional[float] = None


def read_sriqa_label(path: PathLike) -> SRIQALabel:
    """Read and validate one SRIQA-Bench label JSON."""
    data = _load_json(path)
    p1 = _section(data, path, "Picture_01")
    p2 = _section(data, path, "Picture_02")
    start, end, total = _timing(data)
    return SRIQALabel(
        _name(p1, path, "Picture_01"),
        _name(p2, path, "Picture_02"),
        _label(p1, path, "Picture_01"),
        _label(p2, path, "Picture_02"),
        start,
        end,
        total,
    )


def write_sriqa_label(path: PathLike, name1: str, label1: str, name2: str, label2: str, *, total: float = 2.0) -> None:
    """Write a SRIQA-Bench label JSON (``Picture_01``/``Picture_02`` with Name and Label, plus ``Time_cost``)."""
    data = {
        "Picture_01": {"Name": name1, "Label": label1},
        "Picture_02": {"Name": name2, "Label": label2},
        "Time_cost": {"Start": "2024-10-01 10:00:00", "End": "2024-10-01 10:00:02", "Total": total},
    }
    _write_atomic(path, json.dumps(data, indent=4))


def _read_lines(path: PathLike) -> list[tuple[int, str]]:
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            return [(i, line.strip()) for i, line in enumerate(fh, 1) if line.strip()]
    except FileNotFoundError:
        raise LabelFormatError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFormatError(path, f"cannot read ({exc})") from None


def _float(text: str, path: PathLike, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelFormatError(path, f"{what} {text!r} is not a number", line) from None
    if not math.isfinite(value):
        raise LabelFormatError(path, f"{what} {text!r} is not finite", line)
    return value


def _prob(text: str, path: PathLike, line: int, what: str) -> float:
    value = _float(text, path, line, what)
    if not 0.0 <= value <= 1.0:
        raise LabelFormatError(path, f"{what} {text!r} is outside [0, 1]", line)
    return value


def read_triplet_file(path: PathLike, group_of=None) -> list[TripletRecord]:
    """Read a 6-column ``Triplet.txt`` or a 4-column ``TripletEachType`` file.

    ``group_of(ref_name) -> str`` sets the ``group`` field (default: the reference file stem).
    """
    out = []
    for lineno, line in _read_lines(path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (4, 6):
            raise LabelFormatError(path, f"expected 4 or 6 comma-separated columns, got {len(parts)}", lineno)
        g = [_prob(p, path, lineno, "label") for p in parts[3:]]
        ref = parts[2]
        group = group_of(ref) if group_of else os.path.splitext(ref)[0]
        out.append(
            TripletRecord(group, parts[0], parts[1], ref, g[0], g[1] if len(g) > 1 else None, g[2] if len(g) > 2 else None)
        )
    return out


def write_triplet_file(path: PathLike, triplets: Iterable[TripletRecord], columns: int = 6) -> int:
    """Write triplets in the official format (6 or 4 columns); returns the number of lines."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for t in triplets:
            fh.write(t.to_line(columns) + "\n")
            n += 1
    return n


def read_classic_mos_file(path: PathLike, *, lowercase: bool = False) -> list[MosRecord]:
    """Read a KADID-10k / PIPAL / TID2013 MOS file (``dist,ref,MOS`` or ``dist,ref,MOS,var``).

    ``group`` is the file stem; ``extra`` holds ``{"var": ...}`` for KADID lines. ``lowercase`` lower-cases
    the file names (TID2013 convention).
    """
    group = Path(path).stem
    if lowercase:
        group = group.lower()
    out = []
    for lineno, line in _read_lines(path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (3, 4):
            raise LabelFormatError(path, f"expected 'dist,ref,MOS' or 'dist,ref,MOS,var', got {len(parts)} columns", lineno)
        if not parts[0] or not parts[1]:
            raise LabelFormatError(path, "empty image name", lineno)
        mos = _float(parts[2], path, lineno, "MOS")
        extra = {"var": _float(parts[3], path, lineno, "variance")} if len(parts) == 4 else {}
        dist, ref = (parts[0].lower(), parts[1].lower()) if lowercase else (parts[0], parts[1])
        out.append(MosRecord(group, dist, ref, mos, extra))
    return out


def write_classic_mos_file(path: PathLike, records: Sequence[MosRecord]) -> None:
    """Write records as ``dist,ref,MOS`` (or ``dist,ref,MOS,var`` when ``extra['var']`` is present)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            line = f"{r.image_name},{r.reference_name},{r.mos}"
            if "var" in r.extra:
                line += f",{r.extra['var']}"
            fh.write(line + "\n")


def read_sriqa_mos_file(path: PathLike) -> list[tuple[str, float]]:
    """Read a SRIQA-Bench MOS file: ``name,score`` or ``name score`` lines; returns (name, MOS) in file order."""
    out = []
    for lineno, line in _read_lines(path):
        parts = [p.strip() for p in (line.split(",") if "," in line else line.split())]
        if len(parts) != 2 or not parts[0]:
            raise LabelFormatError(path, "expected 'name,score'", lineno)
        out.append((parts[0], _float(parts[1], path, lineno, "MOS")))
    return out


def write_sriqa_mos_file(path: PathLike, scores: Sequence[tuple[str, float]]) -> None:
    """Write ``name,score`` lines sorted by descending score (ties by descending name), as the official tool."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(scores, key=lambda t: (t[1], t[0]), reverse=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for name, score in ordered:
            fh.write(f"{name},{float(score)}\n")
