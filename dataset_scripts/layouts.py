"""Discovery and scanning of the official folder layouts (spec sections 3.1-3.3 and 7).

Each ``scan_*`` function walks a dataset folder once, collects everything the builders need and records
every defect it meets in a :class:`~dataset_scripts.problems.CheckReport` instead of stopping at the
first. Pixel-level checks (unreadable files, size mismatches) are done by :mod:`dataset_scripts.check`.

Layouts:

* DiffIQA: ``{root}/{Train,Validation,Test}/`` split folders, or ``{root}`` itself as one folder; each
  with ``images/{01..06}/{ref}_{idx}.png``, ``images/Original/{ref}.png`` and
  ``labels/{A,B,C}/{01..06}/{ref}_{idx}.json`` (also accepted: ``trainlabel/labels/``).
* SRIQA-Bench: ``images/{Method or MethodToken}/{prefix}_{Method}x4.png``, ``images/Original/
  {prefix}_Original.png``, ``MOS/``, ``MOS_Reg/``, ``MOS_Gen/`` with ``{prefix}.txt`` and
  ``labels/{A..J}/{prefix}/*.json``.
* KADID-10k / PIPAL / TID2013: ``{root}/images/`` (flat: distorted and references) and
  ``{root}/{Train,Validation,Test}/MOS/{ref}.txt`` (optionally ``Triplet/Triplet.txt``).
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .formats import (
    LabelFormatError,
    SRIQALabel,
    read_classic_mos_file,
    read_diffiqa_label,
    read_sriqa_label,
    read_sriqa_mos_file,
    read_triplet_file,
)
from .problems import CheckReport
from .schema import MosRecord, TripletRecord

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")

#: Official split folder names -> ``datasets`` split names.
SPLIT_FOLDERS: "OrderedDict[str, str]" = OrderedDict([("Train", "train"), ("Validation", "validation"), ("Test", "test")])
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "test": "test", "testing": "test"}

#: SRIQA-Bench regression-based methods (the rest are generative).
SRIQA_REGRESSION = ("SwinIR", "RealESRNet")
#: SRIQA-Bench method categories (names of the ``category`` ClassLabel, in code order).
SRIQA_CATEGORIES = ("original", "regression", "generative")
CLASSIC_DATASETS = ("kadid10k", "pipal", "tid2013")


#: Scans with at least this many label files show a tqdm progress bar.
PROGRESS_MIN_FILES = 5000


def _progress(items: list, desc: str) -> "list":
    if len(items) < PROGRESS_MIN_FILES:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="file")


def _label_error_kind(exc: LabelFormatError) -> str:
    return "bad_label" if ".Label is" in exc.problem else "malformed_label"


class ImageIndex:
    """Files of one folder, looked up by exact name, case-insensitive name, or stem."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.by_name: dict[str, Path] = {}
        self.by_lower: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        if folder.is_dir():
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    p = Path(entry.path)
                    self.by_name[entry.name] = p
                    self.by_lower.setdefault(entry.name.lower(), p)
                    self.by_stem.setdefault(os.path.splitext(entry.name)[0], p)

    def find(self, name: str) -> Optional[Path]:
        return self.by_name.get(name) or self.by_lower.get(name.lower())

    def find_stem(self, stem: str) -> Optional[Path]:
        return self.by_stem.get(stem)

    def __len__(self) -> int:
        return len(self.by_name)


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


# ----------------------------------------------------------------------------------------------- DiffIQA


@dataclass
class DiffIQAScan:
    """One DiffIQA split folder: images, raw labels and what was wrong."""

    root: Path
    images_dir: Path
    labels_dir: Path
    variants: list[str]
    annotators: list[str]
    references: list[str]
    #: ``{ref: {variant: {annotator: DiffIQALabel}}}``
    labels: dict
    #: ``{(ref, variant, annotator): label file path}``
    label_files: dict
    variant_images: dict  # variant -> ImageIndex
    originals: ImageIndex
    #: ``{annotator: (labels present, labels expected)}`` of the annotators who did not label every pair
    incomplete: dict = field(default_factory=dict)

    @property
    def panel(self) -> list[str]:
        """The annotators whose votes make the majority: those who labelled every pair of this folder (an
        unexpected or unfinished annotator, e.g. one answer under a new name, is left out). When nobody
        labelled every pair (annotation still under way), every annotator."""
        complete = [a for a in self.annotators if a not in self.incomplete]
        return complete or list(self.annotators)

    def enhanced_path(self, ref: str, variant: str) -> Optional[Path]:
        idx = self.variant_images.get(variant)
        return idx.find_stem(f"{ref}_{variant}") if idx else None

    def reference_path(self, ref: str) -> Optional[Path]:
        return self.originals.find_stem(ref)


def diffiqa_split_folders(data_dir: PathLike) -> "OrderedDict[str, Path]":
    """``{split: folder}``: ``Train``/``Validation``/``Test`` subfolders if present, else ``{"full": data_dir}``."""
    root = Path(data_dir)
    out: "OrderedDict[str, Path]" = OrderedDict()
    for name in _subdirs(root):
        split = _SPLIT_ALIASES.get(name.lower())
        if split and split not in out and ((root / name / "images").is_dir() or _diffiqa_labels_dir(root / name).is_dir()):
            out[split] = root / name
    if out:
        order = ["train", "validation", "test"]
        return OrderedDict(sorted(out.items(), key=lambda kv: order.index(kv[0])))
    return OrderedDict([("full", root)])


def _diffiqa_labels_dir(folder: Path) -> Path:
    """The raw-label folder of a DiffIQA split folder: ``labels/`` or ``label/``, or ``labels/``/``label/``
    inside a ``*label*`` subfolder (``trainlabel/labels`` as in the authors' training configs)."""
    candidates = [folder / "labels", folder / "label"]
    for sub in _subdirs(folder):
        if "label" in sub.lower() and sub.lower() not in ("labels", "label"):
            candidates += [folder / sub / "labels", folder / sub / "label"]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return folder / "labels"


#: ``Problem.part`` of the "annotator did not label every pair" problems: the majority views leave such an
#: annotator out (with a warning) instead of refusing the folder.
ANNOTATORS_PART = "annotators"


def scan_diffiqa_folder(folder: PathLike, report: CheckReport, require_labels: bool = True) -> DiffIQAScan:
    """Scan one DiffIQA split folder, adding layout, label and count problems to ``report``.

    ``require_labels=False`` accepts an unlabelled folder (e.g. freshly generated by ``afine enhancer
    generate-diffiqa``), whose images may also sit directly in ``folder`` (``01..06/`` and ``Original/``).
    """
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", _diffiqa_labels_dir(folder)
    if not images_dir.is_dir() and (folder / "Original").is_dir():
        images_dir = folder  # the generator's output tree: {out}/{01..06}, {out}/Original
    if not images_dir.is_dir():
        report.add("layout", images_dir, "folder not found", part="images")
    if require_labels and not labels_dir.is_dir():
        report.add("layout", labels_dir, "folder not found", part="labels")
    variants_img = [v for v in _subdirs(images_dir) if v != "Original" and (images_dir is not folder or v.isdigit())]
    annotators = _subdirs(labels_dir)
    variants_lab = sorted({v for a in annotators for v in _subdirs(labels_dir / a)})
    variants = sorted(set(variants_img) | set(variants_lab))
    if images_dir.is_dir() and not (images_dir / "Original").is_dir():
        report.add("layout", images_dir / "Original", "reference folder not found", part="images")
    variant_images = {v: ImageIndex(images_dir / v) for v in variants}
    originals = ImageIndex(images_dir / "Original")

    labels: dict = {}
    label_files: dict = {}
    absent_count: dict = {}
    n_labels = 0
    entries = [(a, v, entry) for a in annotators for v in _subdirs(labels_dir / a)
               for entry in sorted(os.scandir(labels_dir / a / v), key=lambda e: e.name)]
    report.current_part = "labels"
    for a, v, entry in _progress(entries, f"reading DiffIQA labels in {folder.name}"):
        if not entry.is_file() or not entry.name.lower().endswith(".json"):
            continue
        stem = entry.name[:-5]
        path = Path(entry.path)
        if "_" not in stem:
            report.add("malformed_label", path, f"file name should be {{reference}}_{v}.json")
            continue
        ref, idx = stem.rsplit("_", 1)
        if idx != v:
            report.add("inconsistent", path, f"label file of variant {idx!r} lies in folder {v!r}")
            continue
        n_labels += 1
        try:
            lab = read_diffiqa_label(path)
        except LabelFormatError as exc:
            report.add(_label_error_kind(exc), path, exc.problem)
            continue
        if os.path.splitext(lab.enhanced_name)[0] != stem:
            report.add("inconsistent", path, f"Picture_AI.Name is {lab.enhanced_name!r}, expected {stem}.png")
        if os.path.splitext(lab.reference_name)[0] != ref:
            report.add("inconsistent", path, f"picture_Original.Name is {lab.reference_name!r}, expected {ref}.png")
        labels.setdefault(ref, {}).setdefault(v, {})[a] = lab
        label_files[(ref, v, a)] = path
    report.current_part = ""

    refs = set(labels) | set(originals.by_stem)
    for v, idx in variant_images.items():
        for stem in idx.by_stem:
            if "_" in stem and stem.rsplit("_", 1)[1] == v:
                refs.add(stem.rsplit("_", 1)[0])
    references = sorted(refs)
    for ref in references:
        if originals.find_stem(ref) is None:
            report.add("missing_image", images_dir / "Original" / f"{ref}.png", f"reference of group {ref} not found",
                       part="images")
        missing_imgs = [v for v in variants if variant_images[v].find_stem(f"{ref}_{v}") is None]
        for v in missing_imgs:
            report.add("missing_image", images_dir / v / f"{ref}_{v}.png", f"enhanced image {v} of group {ref} not found",
                       part="images")
        if missing_imgs and variants:
            report.add("wrong_count", images_dir, f"group {ref} has {len(variants) - len(missing_imgs)} enhanced images, "
                       f"expected {len(variants)}", part="images")
        for a in annotators:
            missing = [v for v in variants if v not in labels.get(ref, {}) or a not in labels[ref][v]]
            # a file that exists but failed to parse is reported already; count only absent files
            absent = [v for v in missing if not (labels_dir / a / v / f"{ref}_{v}.json").is_file()]
            if absent:
                absent_count[a] = absent_count.get(a, 0) + len(absent)
                report.add("wrong_count", labels_dir / a, f"group {ref}: annotator {a} has no label for variant(s) {', '.join(absent)} "
                           f"(expected {len(variants)} labels)", part=ANNOTATORS_PART)
    expected = len(references) * len(variants)
    incomplete = {a: (expected - n, expected) for a, n in absent_count.items()}
    report.stats["groups"] = report.stats.get("groups", 0) + len(references)
    report.stats["label files"] = report.stats.get("label files", 0) + n_labels
    return DiffIQAScan(folder, images_dir, labels_dir, variants, annotators, references, labels, label_files,
                       variant_images, originals, incomplete)


def coverage_warning(report: CheckReport, scans: dict, coverage: list, view: str) -> str:
    """The warning naming every DiffIQA annotator who did not label every pair (``coverage``: their problems;
    ``scans``: ``{split: DiffIQAScan}``), and what ``view`` does with them."""
    who = []
    for split, scan in scans.items():
        for a, (have, expected) in sorted(scan.incomplete.items()):
            who.append(f"{a} ({have} of {expected} labels{'' if split == 'full' else ' in ' + split})")
    if view == "annotations":
        fate = "their labels are included as they are"
    elif any(len(scan.panel) == len(scan.annotators) and scan.incomplete for scan in scans.values()):
        fate = ("no annotator labelled every pair of a split, so the majority there is taken over the labels "
                "present; elsewhere they are left out of the majority vote")
    else:
        fate = "left out of the majority vote"
    lines = [f"  {p}" for p in coverage[:20]]
    if len(coverage) > 20:
        lines.append(f"  ... and {len(coverage) - 20} more (run 'afine data check')")
    return (f"{report.dataset} at {report.root}: annotator(s) who did not label every pair: {', '.join(who)}; "
            f"view {view!r}: {fate}.\n" + "\n".join(lines))



# ----------------------------------------------------------------------------------------------- SRIQA-Bench


def sriqa_method(name: str) -> tuple[str, str, str]:
    """``(group, token, method)`` of a SRIQA-Bench file name: ``online15_SwinIRx4.png`` ->
    ``("online15", "SwinIRx4", "SwinIR")``; ``x1_Original.png`` -> ``("x1", "Original", "Original")``."""
    stem = os.path.splitext(name)[0]
    if "_" not in stem:
        raise ValueError(f"{name!r} is not '{{prefix}}_{{Method}}' ")
    group, token = stem.split("_", 1)
    method = token
    if token != "Original":
        head, sep, tail = token.rpartition("x")
        if sep and head and tail.isdigit():
            method = head
    return group, token, method


def sriqa_category(method: str) -> str:
    """``original``, ``regression`` (SwinIR, RealESRNet) or ``generative`` (every other SR method)."""
    if method == "Original":
        return "original"
    return "regression" if method in SRIQA_REGRESSION else "generative"


@dataclass
class SRIQAScan:
    root: Path
    images: dict  # file name -> Path, over all method folders
    groups: dict  # group -> sorted list of image names
    mos: dict  # folder name (MOS, MOS_Reg, MOS_Gen) -> OrderedDict group -> [(name, mos)]
    annotators: list[str]
    #: list of (annotator, group, label file path, SRIQALabel)
    labels: list = field(default_factory=list)

    def reference_name(self, group: str) -> Optional[str]:
        for name in self.groups.get(group, []):
            if sriqa_method(name)[2] == "Original":
                return name
        return None


MOS_FOLDERS = ("MOS", "MOS_Reg", "MOS_Gen")


def scan_sriqa(root: PathLike, report: CheckReport) -> SRIQAScan:
    """Scan a SRIQA-Bench folder, adding problems to ``report``. Both method-folder layouts are accepted
    (``images/SwinIR/`` as in the README, ``images/SwinIRx4/`` as the official loader expects)."""
    root = Path(root)
    images_dir = root / "images"
    report.current_part = "images"
    if not images_dir.is_dir():
        report.add("layout", images_dir, "folder not found")
    images: dict[str, Path] = {}
    for folder in _subdirs(images_dir):
        for name, path in ImageIndex(images_dir / folder).by_name.items():
            try:
                _, token, method = sriqa_method(name)
            except ValueError as exc:
                report.add("inconsistent", path, str(exc))
                continue
            if folder not in (token, method):
                report.add("inconsistent", path, f"image of method {token} lies in folder {folder!r}")
            images.setdefault(name, path)
    pending_missing: list[tuple[str, str]] = []
    groups: dict[str, list[str]] = {}
    for name in sorted(images):
        groups.setdefault(sriqa_method(name)[0], []).append(name)
    methods = sorted({sriqa_method(n)[1] for n in images})
    for g, names in sorted(groups.items()):
        have = {sriqa_method(n)[1] for n in names}
        for token in methods:
            if token not in have:
                pending_missing.append((g, token))
        if len(names) != len(methods):
            report.add("wrong_count", images_dir, f"group {g} has {len(names)} images, expected {len(methods)} (one per method folder)")
        if "Original" not in methods:
            report.add("missing_image", images_dir / "Original" / f"{g}_Original.png", f"group {g} has no Original")

    # images named by MOS or label files but absent: reported once per image and part, not once per file
    referenced: dict[str, list[tuple[Path, str]]] = {}
    mos: dict = {}
    for folder in MOS_FOLDERS:
        report.current_part = folder
        d = root / folder
        if not d.is_dir():
            if folder == "MOS":
                report.add("layout", d, "folder not found")
            continue
        table: "OrderedDict[str, list]" = OrderedDict()
        for f in sorted(d.glob("*.txt")):
            try:
                rows = read_sriqa_mos_file(f)
            except LabelFormatError as exc:
                report.add("malformed_label", f, exc.problem)
                continue
            for name, _ in rows:
                if name not in images:
                    referenced.setdefault(name, []).append((f, folder))
                elif sriqa_method(name)[0] != f.stem:
                    report.add("inconsistent", f, f"{name} belongs to group {sriqa_method(name)[0]}, not {f.stem}")
            dup = [n for n, c in Counter(n for n, _ in rows).items() if c > 1]
            if dup:
                report.add("malformed_label", f, f"listed more than once: {', '.join(dup)}")
            table[f.stem] = rows
        if table:
            counts = Counter(len(v) for v in table.values())
            expected = len(methods) if folder == "MOS" and methods else counts.most_common(1)[0][0]
            for g, rows in table.items():
                if len(rows) != expected:
                    report.add("wrong_count", d / f"{g}.txt", f"{len(rows)} MOS lines, expected {expected}")
        mos[folder] = table
    report.current_part = "labels"

    labels_dir = root / "labels"
    annotators = _subdirs(labels_dir)
    labels = []
    stems = {os.path.splitext(n)[0]: n for n in images}
    n_total = sum(len(os.listdir(labels_dir / a / g)) for a in annotators for g in _subdirs(labels_dir / a))
    bar = None
    if n_total >= PROGRESS_MIN_FILES:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_total, desc="reading SRIQA-Bench labels", unit="file")
        except ImportError:  # pragma: no cover
            bar = None
    for a in annotators:
        for g in _subdirs(labels_dir / a):
            seen: Counter = Counter()
            n_files = 0
            for f in sorted((labels_dir / a / g).glob("*.json")):
                if bar is not None:
                    bar.update(1)
                n_files += 1
                try:
                    lab = read_sriqa_label(f)
                except LabelFormatError as exc:
                    report.add(_label_error_kind(exc), f, exc.problem)
                    continue
                # accept names written without (or with another) extension: resolve by stem
                lab = SRIQALabel(
                    *(n if n in images else stems.get(os.path.splitext(n)[0], n) for n in (lab.name1, lab.name2)),
                    lab.label1, lab.label2, lab.start, lab.end, lab.time_total,
                )
                bad = False
                for nm in (lab.name1, lab.name2):
                    if nm not in images:
                        referenced.setdefault(nm, []).append((f, "labels"))
                        bad = True
                    elif sriqa_method(nm)[0] != g:
                        report.add("inconsistent", f, f"{nm} does not belong to group {g}")
                        bad = True
                if lab.name1 == lab.name2:
                    report.add("malformed_label", f, f"compares {lab.name1} with itself")
                    bad = True
                if bad:
                    continue
                seen[frozenset((lab.name1, lab.name2))] += 1
                labels.append((a, g, f, lab))
            n = len(methods) if g in groups else 0  # a full group: one image per method folder
            expected = n * (n - 1) // 2
            if n and (n_files != expected or any(c > 1 for c in seen.values())):
                dups = sum(c - 1 for c in seen.values() if c > 1)
                report.add("wrong_count", labels_dir / a / g,
                           f"annotator {a} has {n_files} label files for group {g}, expected {expected} (all pairs of {n} images)"
                           + (f"; {dups} duplicate pair(s)" if dups else ""))
    if bar is not None:
        bar.close()
    named = {os.path.splitext(n)[0] for n in referenced}
    for g, token in pending_missing:
        if f"{g}_{token}" not in named:
            folder = images_dir / (token if (images_dir / token).is_dir() else sriqa_method(f"{g}_{token}.png")[2])
            report.add("missing_image", folder / f"{g}_{token}.png", f"group {g} has no image of {token}", part="images")
    for name, uses in sorted(referenced.items()):
        try:
            g, token, method = sriqa_method(name)
        except ValueError:
            g = token = method = ""
        parts = ",".join(dict.fromkeys(p for _, p in uses))
        files = [f for f, _ in uses]
        if g in groups and token in methods:
            # already absent from its group; reported where it is needed, for the views that read those files
            where = f"{images_dir / (method if (images_dir / method).is_dir() else token) / name}"
            report.add("missing_image", where, f"named by {len(files)} MOS/label file(s), e.g. {files[0]}", part=parts)
            continue
        report.add("missing_image", files[0], f"{name} is named by {len(files)} MOS/label file(s) but not found under "
                   "images/", part=parts)
    if annotators:
        for g in groups:
            missing = [a for a in annotators if not (labels_dir / a / g).is_dir()]
            if missing:
                report.add("wrong_count", labels_dir, f"group {g} has no labels from annotator(s) {', '.join(missing)}")
    report.current_part = ""
    report.stats["groups"] = len(groups)
    report.stats["images"] = len(images)
    report.stats["label files"] = len(labels)
    return SRIQAScan(root, images, groups, mos, annotators, labels)


# ----------------------------------------------------------------------------------------------- classic


@dataclass
class ClassicScan:
    root: Path
    dataset: str
    images: ImageIndex
    #: split -> list of MosRecord (file order, files sorted)
    records: dict
    #: split -> path of Triplet/Triplet.txt if present
    triplet_files: dict

    def path(self, name: str) -> Optional[Path]:
        return self.images.find(name)


def scan_classic(root: PathLike, dataset: str, report: CheckReport) -> ClassicScan:
    """Scan a KADID-10k / PIPAL / TID2013 folder (``images/`` + ``{Train,Validation,Test}/MOS/``)."""
    root = Path(root)
    dataset = dataset.lower()
    lowercase = dataset == "tid2013"
    images = ImageIndex(root / "images")
    if not (root / "images").is_dir():
        report.add("layout", root / "images", "folder not found")
    records: "OrderedDict[str, list]" = OrderedDict()
    triplet_files: dict = {}
    ref_split: dict[str, str] = {}
    counts: dict[Path, int] = {}
    listed_in: dict[str, list[Path]] = {}
    by_file: dict[Path, list[MosRecord]] = {}
    for folder, split in SPLIT_FOLDERS.items():
        d = root / folder / "MOS"
        if not d.is_dir():
            continue
        recs: list[MosRecord] = []
        for f in sorted(d.glob("*.txt")):
            try:
                rows = read_classic_mos_file(f, lowercase=lowercase)
            except LabelFormatError as exc:
                report.add("malformed_label", f, exc.problem)
                continue
            refs = {r.reference_name for r in rows}
            if len(refs) > 1:
                report.add("inconsistent", f, f"lists several references: {', '.join(sorted(refs))}")
            elif refs and os.path.splitext(next(iter(refs)))[0].lower() != f.stem.lower():
                ref = next(iter(refs))
                report.add("inconsistent", f, f"file name does not match its reference {ref} (expected "
                           f"{os.path.splitext(ref)[0]}.txt; a stray copy?)")
            for r in rows:
                listed_in.setdefault(r.image_name.lower(), []).append(f)
            for r in rows:
                if images.find(r.image_name) is None:
                    report.add("missing_image", f, f"{r.image_name} is listed but not found in {root / 'images'}")
            for ref in sorted(refs):
                if images.find(ref) is None:
                    report.add("missing_image", f, f"reference {ref} not found in {root / 'images'}")
                if ref in ref_split and ref_split[ref] != split:
                    report.add("inconsistent", f, f"reference {ref} also appears in split {ref_split[ref]}")
                ref_split.setdefault(ref, split)
            dup = [n for n, c in Counter(r.image_name for r in rows).items() if c > 1]
            if dup:
                report.add("malformed_label", f, f"listed more than once: {', '.join(dup)}")
            counts[f] = len(rows)
            by_file[f] = rows
            recs += rows
        records[split] = recs
        tf = root / folder / "Triplet" / "Triplet.txt"
        if tf.is_file():
            triplet_files[split] = tf
    if not records:
        report.add("layout", root, "no {Train,Validation,Test}/MOS/ folders found")
    # an image listed in two MOS files (e.g. "A0024 - Copy.txt" beside "A0024.txt") would be loaded twice
    shared: "OrderedDict[tuple[Path, ...], list[str]]" = OrderedDict()
    for name, files in listed_in.items():
        distinct = tuple(dict.fromkeys(files))
        if len(distinct) > 1:
            shared.setdefault(distinct, []).append(name)
    for files, names in shared.items():
        # blame the file whose name does not match its reference (the stray copy), else the last one
        ref_stems = {f: {os.path.splitext(r.reference_name)[0].lower() for r in by_file[f]} for f in files}
        blamed = next((f for f in files if ref_stems[f] != {f.stem.lower()}), files[-1])
        others = ", ".join(str(f) for f in files if f != blamed)
        example = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        report.add("inconsistent", blamed, f"{len(names)} image(s) also listed in {others} ({example}); "
                   "each image must be listed in one MOS file")
    if counts:
        expected = Counter(counts.values()).most_common(1)[0][0]
        for f, c in counts.items():
            if c != expected:
                report.add("wrong_count", f, f"{c} MOS lines, expected {expected} (the count of most groups)")
    report.stats["groups"] = len(counts)
    report.stats["images"] = sum(counts.values())
    return ClassicScan(root, dataset, images, records, triplet_files)


def read_shipped_triplets(path: Path, scan: ClassicScan, report: CheckReport) -> list[TripletRecord]:
    """Read a shipped ``Triplet.txt`` and report names missing from ``images/``."""
    try:
        trips = read_triplet_file(path)
    except LabelFormatError as exc:
        report.add("malformed_label", path, exc.problem)
        return []
    if scan.dataset == "tid2013":
        trips = [TripletRecord(t.group.lower(), t.img1_name.lower(), t.img2_name.lower(), t.ref_name.lower(), t.g12,
                               t.g1ref, t.g2ref, t.type) for t in trips]
    # The official generate_triplet.py named every reference "{stem}.png", also for PIPAL/TID2013 whose
    # references are .bmp: resolve such names by stem to the file that exists.
    stems = {os.path.splitext(n)[0].lower(): p.name for n, p in scan.images.by_lower.items()}
    fixed: dict[str, str] = {}
    missing = set()
    for n in {n for t in trips for n in (t.img1_name, t.img2_name, t.ref_name)}:
        if scan.path(n) is not None:
            fixed[n] = n
        elif os.path.splitext(n)[0].lower() in stems:
            actual = stems[os.path.splitext(n)[0].lower()]
            fixed[n] = actual.lower() if scan.dataset == "tid2013" else actual
        else:
            missing.add(n)
            fixed[n] = n
    for n in sorted(missing):
        report.add("missing_image", path, f"{n} is listed but not found in {scan.root / 'images'}")
    return [TripletRecord(t.group, fixed[t.img1_name], fixed[t.img2_name], fixed[t.ref_name], t.g12, t.g1ref,
                          t.g2ref, t.type) for t in trips]


diffiqa_labels_dir = _diffiqa_labels_dir


def detect_dataset(root: PathLike) -> Optional[str]:
    """Guess the dataset kind of a folder: ``sriqa_bench``, ``diffiqa``, or None for the classic sets
    (whose layouts are identical: pass the name explicitly)."""
    root = Path(root)
    if (root / "MOS").is_dir() or (root / "MOS_Reg").is_dir() or ((root / "images" / "Original").is_dir()
                                                                  and (root / "LRImages").is_dir()):
        return "sriqa_bench"
    for split, folder in diffiqa_split_folders(root).items():
        if (folder / "images" / "Original").is_dir() or _diffiqa_labels_dir(folder).is_dir():
            if not any((folder / s / "MOS").is_dir() for s in SPLIT_FOLDERS):
                return "diffiqa"
    return None


__all__ = [
    "ImageIndex",
    "DiffIQAScan",
    "SRIQAScan",
    "ClassicScan",
    "diffiqa_split_folders",
    "diffiqa_labels_dir",
    "scan_diffiqa_folder",
    "coverage_warning",
    "ANNOTATORS_PART",
    "scan_sriqa",
    "scan_classic",
    "read_shipped_triplets",
    "sriqa_method",
    "sriqa_category",
    "detect_dataset",
    "SPLIT_FOLDERS",
    "SRIQA_REGRESSION",
    "SRIQA_CATEGORIES",
    "CLASSIC_DATASETS",
    "MOS_FOLDERS",
]
