"""Regenerate the paper's derived files from raw labels, deterministically, in the official formats.

=========================  ===============================================  ==================================
function                   writes                                           official counterpart
=========================  ===============================================  ==================================
write_diffiqa_majority     ``enhanced,reference,label,vote_A,vote_B,...``   (inside generate_triplet.py)
write_diffiqa_triplets     ``Triplet.txt`` (6 columns)                      process_diffiqa/generate_triplet.py
write_diffiqa_types        ``TripletEachType/{TYPE}.txt`` (4 columns)       generate_triplet_eachtype.py
split_diffiqa              ``{Train,Validation,Test}/{images,labels}``      split_train_val_test_DiffIQA.py
split_classic              ``{Train,Validation,Test}/MOS/{ref}.txt``        (the authors' shipped split)
write_classic_triplets     ``{Split}/Triplet/Triplet.txt`` (nlogn)          process_traditional_iqa/generate_triplet.py
write_sriqa_mos            ``MOS/{prefix}.txt`` (+ ``MOS_Reg``, ``MOS_Gen``)   process_sriqa/compute_MOS.py
write_sriqa_pairs          ``img1,img2,ref,g12`` evaluation pairs            (inside SRIQADataset)
=========================  ===============================================  ==================================

Every function takes the dataset folder, validates it with the same scan as the builders, and raises
:class:`~dataset_scripts.problems.DatasetCheckError` (listing all problems) on a broken folder.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

from .formats import LabelFormatError, read_classic_mos_file, write_classic_mos_file, write_sriqa_mos_file, write_triplet_file
from .labels import ALL_TYPES, majority_pairs
from .layouts import (
    ANNOTATORS_PART,
    CLASSIC_DATASETS,
    SPLIT_FOLDERS,
    coverage_warning,
    scan_classic,
    scan_diffiqa_folder,
    scan_sriqa,
    sriqa_category,
    sriqa_method,
)
from .pairing import diffiqa_triplets, filter_types, nlogn_triplets
from .problems import CheckReport, DatasetCheckError, DatasetProblemWarning
from .schema import MosRecord, PairRecord
from .thurstone import thurstone_mos

__all__ = [
    "diffiqa_majority",
    "write_diffiqa_majority",
    "write_diffiqa_triplets",
    "write_diffiqa_types",
    "split_references",
    "split_diffiqa",
    "split_classic",
    "write_classic_triplets",
    "sriqa_thurstone_mos",
    "write_sriqa_mos",
    "sriqa_pairs",
    "write_sriqa_pairs",
]

PathLike = Union[str, os.PathLike]


def _raise(report: CheckReport) -> None:
    if not report.ok:
        raise DatasetCheckError(report)


def diffiqa_majority(split_folder: PathLike) -> list[PairRecord]:
    """Majority-labelled pairs of one DiffIQA split folder (``images/`` + ``labels/``), sorted by
    reference then variant; votes in annotator order (A, B, C).

    As in ``dataset_scripts.load``: an annotator who did not label every pair is named in a
    :class:`~dataset_scripts.problems.DatasetProblemWarning` and left out of the vote (``DiffIQAScan.panel``)."""
    report = CheckReport(str(split_folder), "diffiqa")
    scan = scan_diffiqa_folder(split_folder, report)
    coverage = [p for p in report.problems if p.part == ANNOTATORS_PART]
    _raise(CheckReport(report.root, report.dataset, [p for p in report.problems if p.part != ANNOTATORS_PART]))
    if coverage:
        warnings.warn(coverage_warning(report, {"full": scan}, coverage, "majority"), DatasetProblemWarning,
                      stacklevel=2)
    panel = scan.panel
    votes = {ref: {v: {a: lab.label for a, lab in by_a.items() if a in panel} for v, by_a in by_v.items()}
             for ref, by_v in scan.labels.items()}
    return majority_pairs(votes, annotators=panel)


def write_diffiqa_majority(split_folder: PathLike, out_file: PathLike) -> int:
    """Write ``enhanced,reference,label,vote_A,vote_B,vote_C`` lines (no header); returns the line count.
    Three-way disagreements are left out."""
    pairs = diffiqa_majority(split_folder)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8", newline="\n") as fh:
        for p in pairs:
            fh.write(",".join([p.distorted_name, p.reference_name, p.label, *p.votes]) + "\n")
    return len(pairs)


def write_diffiqa_triplets(split_folder: PathLike, out_file: PathLike) -> int:
    """Write the DiffIQA ``Triplet.txt`` (``img1,img2,ref,g12,g1ref,g2ref``) of one split folder."""
    return write_triplet_file(out_file, diffiqa_triplets(diffiqa_majority(split_folder)), columns=6)


def write_diffiqa_types(split_folder: PathLike, out_dir: PathLike, types: Sequence[str] = ALL_TYPES) -> dict[str, int]:
    """Write ``{out_dir}/{TYPE}.txt`` (``img1,img2,ref,g12``) for each type; returns line counts."""
    by_type = filter_types(diffiqa_triplets(diffiqa_majority(split_folder)), types)
    return {t: write_triplet_file(Path(out_dir) / f"{t}.txt", trips, columns=4) for t, trips in by_type.items()}


def split_references(
    names: Sequence[str],
    *,
    seed: int = 0,
    train: float = 0.7,
    test: float = 0.2,
) -> "OrderedDict[str, list[str]]":
    """Split reference names into train / validation / test, seeded.

    Names are de-duplicated and sorted first (so the result does not depend on input order), then shuffled
    with ``random.Random(seed)``. As in the official script: ``n_train = round(train * n)``,
    ``n_test = round(test * n)``, validation gets the rest (about 10 %); test is the tail of the shuffled
    list. Each output list is sorted.
    """
    pool = sorted(set(names))
    random.Random(seed).shuffle(pool)
    n = len(pool)
    n_train, n_test = round(n * train), round(n * test)
    if n_train + n_test > n:
        n_test = n - n_train
    out: "OrderedDict[str, list[str]]" = OrderedDict()
    out["train"] = sorted(pool[:n_train])
    out["validation"] = sorted(pool[n_train : n - n_test])
    out["test"] = sorted(pool[n - n_test :])
    return out


def _place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if mode == "copy":
        shutil.copy2(src, dst)
    elif mode == "hardlink":
        os.link(src, dst)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        raise ValueError(f"mode must be copy, hardlink or symlink, not {mode!r}")


def split_diffiqa(src: PathLike, dst: PathLike, *, seed: int = 0, mode: str = "copy") -> dict[str, int]:
    """Split an unsplit DiffIQA folder (``images/``, ``labels/``) by reference into
    ``{dst}/{Train,Validation,Test}/{images,labels}`` (70/10/20, seeded). ``mode``: ``copy``,
    ``hardlink`` or ``symlink``. Returns the number of references per split.

    The authors ship their split and ask not to re-split for publications; this exists to reproduce the
    procedure on new data.
    """
    src, dst = Path(src), Path(dst)
    report = CheckReport(str(src), "diffiqa")
    scan = scan_diffiqa_folder(src, report)
    _raise(report)
    splits = split_references(scan.references, seed=seed)
    folder_of = {v: k for k, v in SPLIT_FOLDERS.items()}
    for split, refs in splits.items():
        base = dst / folder_of[split]
        for ref in refs:
            _place(scan.reference_path(ref), base / "images" / "Original" / scan.reference_path(ref).name, mode)
            for v in scan.variants:
                p = scan.enhanced_path(ref, v)
                _place(p, base / "images" / v / p.name, mode)
                for a in scan.annotators:
                    lf = scan.label_files[(ref, v, a)]
                    _place(lf, base / "labels" / a / v / lf.name, mode)
    return {k: len(v) for k, v in splits.items()}


def split_classic(mos_file: PathLike, dst: PathLike, *, seed: int = 0, lowercase: bool = False) -> dict[str, int]:
    """Split one combined MOS list (``dist,ref,MOS[,var]`` lines; a header line is skipped) by reference
    into ``{dst}/{Train,Validation,Test}/MOS/{ref_stem}.txt`` (70/10/20, seeded). Returns references per split."""
    path = Path(mos_file)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if lines and lines[0].strip():
        try:
            float(lines[0].split(",")[2])
        except (IndexError, ValueError):
            lines = lines[1:]  # header such as dist_img,ref_img,dmos,var
    tmp = Path(dst) / ".split_input.txt"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        records = read_classic_mos_file(tmp, lowercase=lowercase)
    except LabelFormatError as exc:
        raise LabelFormatError(path, exc.problem, exc.line) from None
    finally:
        tmp.unlink()
    by_ref: "OrderedDict[str, list[MosRecord]]" = OrderedDict()
    for r in records:
        by_ref.setdefault(r.reference_name, []).append(r)
    splits = split_references(list(by_ref), seed=seed)
    folder_of = {v: k for k, v in SPLIT_FOLDERS.items()}
    for split, refs in splits.items():
        for ref in refs:
            stem = os.path.splitext(ref)[0]
            write_classic_mos_file(Path(dst) / folder_of[split] / "MOS" / f"{stem}.txt",
                                   [MosRecord(stem, r.image_name, r.reference_name, r.mos, r.extra) for r in by_ref[ref]])
    return {k: len(v) for k, v in splits.items()}


def write_classic_triplets(root: PathLike, dataset: str, *, seed: int = 0, out_dir: Optional[PathLike] = None) -> dict[str, int]:
    """Write nlogn ``Triplet.txt`` files for every split of a KADID-10k / PIPAL / TID2013 folder.

    Output: ``{out_dir or root}/{Split}/Triplet/Triplet.txt``. Reference names come from the MOS files.
    Returns line counts per split.
    """
    dataset = dataset.lower()
    if dataset not in CLASSIC_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(CLASSIC_DATASETS)}")
    report = CheckReport(str(root), dataset)
    scan = scan_classic(root, dataset, report)
    _raise(report)
    base = Path(out_dir) if out_dir is not None else Path(root)
    folder_of = {v: k for k, v in SPLIT_FOLDERS.items()}
    return {split: write_triplet_file(base / folder_of[split] / "Triplet" / "Triplet.txt",
                                      nlogn_triplets(recs, seed=seed), columns=6)
            for split, recs in scan.records.items()}


def sriqa_thurstone_mos(root: PathLike) -> "OrderedDict[str, dict[str, float]]":
    """Thurstone Case V MOS (0-100, higher = better) of every SRIQA-Bench group from ``labels/``.

    Returns ``{group: {image name: MOS}}`` (groups sorted). Image order inside a group is the sorted
    order of names; the result is independent of file order.
    """
    from .labels import compare_labels

    report = CheckReport(str(root), "sriqa_bench")
    scan = scan_sriqa(root, report)
    _raise(report)
    comps: dict[str, list] = {}
    for _annot, group, _path, lab in scan.labels:
        comps.setdefault(group, []).append((lab.name1, lab.name2, compare_labels(lab.label1, lab.label2)))
    if not comps:
        raise LabelFormatError(Path(root) / "labels", "no label files found")
    out: "OrderedDict[str, dict[str, float]]" = OrderedDict()
    for group in sorted(comps):
        out[group] = thurstone_mos(comps[group], names=scan.groups.get(group)).as_dict()
    return out


def write_sriqa_mos(root: PathLike, out_dir: PathLike, *, subsets: bool = True) -> dict[str, int]:
    """Write ``{out_dir}/MOS/{prefix}.txt`` (``name,score`` sorted descending) from the raw labels and, with
    ``subsets``, ``MOS_Reg/`` (Original + regression methods) and ``MOS_Gen/`` (Original + generative
    methods) with values copied from the full table (not re-normalised). Returns files per folder."""
    table = sriqa_thurstone_mos(root)
    counts = {"MOS": 0, "MOS_Reg": 0, "MOS_Gen": 0} if subsets else {"MOS": 0}
    for group, scores in table.items():
        rows = list(scores.items())
        write_sriqa_mos_file(Path(out_dir) / "MOS" / f"{group}.txt", rows)
        counts["MOS"] += 1
        if subsets:
            for folder, cat in (("MOS_Reg", "regression"), ("MOS_Gen", "generative")):
                keep = [(n, s) for n, s in rows if sriqa_category(sriqa_method(n)[2]) in ("original", cat)]
                write_sriqa_mos_file(Path(out_dir) / folder / f"{group}.txt", keep)
                counts[folder] += 1
    return counts




def sriqa_pairs(root: PathLike, mos_folder: str = "MOS") -> list:
    """The SRIQA-Bench evaluation pairs of ``{root}/{mos_folder}``: every C(n, 2) pair of each MOS file (files
    sorted, lines in file order), reference = the group's Original; see :func:`pairing.all_pairs`."""
    from .pairing import all_pairs

    report = CheckReport(str(root), "sriqa_bench")
    scan = scan_sriqa(root, report)
    if mos_folder not in scan.mos:
        report.add("layout", Path(root) / mos_folder, "folder not found")
    _raise(report)
    out = []
    for group, rows in scan.mos[mos_folder].items():
        ref = scan.reference_name(group)
        ref_mos = dict(rows).get(ref, dict(scan.mos.get("MOS", {}).get(group, [])).get(ref))
        out += all_pairs(rows, group=group, ref_name=ref, ref_score=ref_mos)
    return out


def write_sriqa_pairs(root: PathLike, out_file: PathLike, mos_folder: str = "MOS") -> int:
    """Write the evaluation pairs as 4-column ``img1,img2,ref,g12`` lines; returns the line count."""
    return write_triplet_file(out_file, sriqa_pairs(root, mos_folder), columns=4)
