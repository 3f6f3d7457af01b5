"""Dataset folder checker: every defect in one report, not just the first.

:func:`check` walks a dataset folder in its official layout and reports (see
:data:`~dataset_scripts.problems.PROBLEM_KINDS`): missing images, unreadable image files, malformed or
out-of-vocabulary label JSON, malformed MOS/triplet files, groups with the wrong number of images,
labels or MOS lines, and images whose size differs from their reference. Builders run the same scan
(without decoding pixels) before generating and fail with the full report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Optional, Union

from .layouts import (
    CLASSIC_DATASETS,
    detect_dataset,
    diffiqa_split_folders,
    read_shipped_triplets,
    scan_classic,
    scan_diffiqa_folder,
    scan_sriqa,
)
from .problems import CheckReport

__all__ = ["check", "CheckReport"]

PathLike = Union[str, os.PathLike]


def _progress(items: list, desc: str, show: bool) -> Iterable:
    if not show:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="img")


class _Sizes:
    """Decode each image once with the project loader; remember sizes and failures."""

    def __init__(self, report: CheckReport):
        from .images import image_io

        io = image_io()
        self._load, self._err, self._format = io.load_image, io.ImageLoadError, io.format_size
        self.report = report
        self.sizes: dict[Path, Optional[tuple[int, int]]] = {}

    def size(self, path: Path) -> Optional[tuple[int, int]]:
        if path not in self.sizes:
            try:
                img = self._load(path)
                self.sizes[path] = img.size
            except self._err as exc:
                self.sizes[path] = None
                self.report.add("unreadable_image", path, str(exc).replace(str(path), "").strip(": ") or "cannot decode")
            except Exception as exc:  # noqa: BLE001 - a checker must not crash on one bad file
                self.sizes[path] = None
                self.report.add("unreadable_image", path, f"{type(exc).__name__}: {exc}")
        return self.sizes[path]

    def compare(self, pairs: list[tuple[Path, Path]], desc: str, progress: bool) -> None:
        for img, ref in _progress(pairs, desc, progress):
            a, b = self.size(img), self.size(ref)
            if a is not None and b is not None and a != b:
                self.report.add(
                    "size_mismatch", img, f"size {self._format(*a)} differs from reference {ref.name} ({self._format(*b)})"
                )


def check(
    data_dir: PathLike,
    dataset: Optional[str] = None,
    *,
    decode: bool = True,
    progress: bool = False,
) -> CheckReport:
    """Check a dataset folder and return a :class:`CheckReport` with every problem found.

    Args:
        data_dir: the dataset folder in its official layout.
        dataset: ``diffiqa``, ``sriqa_bench``, ``kadid10k``, ``pipal`` or ``tid2013``; guessed for DiffIQA
            and SRIQA-Bench when omitted (the classic sets share one layout and must be named).
        decode: also decode every image (unreadable files, size mismatches with the reference). Without
            it only existence, labels and counts are checked (what builders do before preparing).
        progress: show tqdm progress bars while decoding.
    """
    from .names import normalize_dataset_name

    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        report = CheckReport(str(root), dataset or "unknown")
        report.add("layout", root, "not a folder")
        return report
    if dataset is None:
        dataset = detect_dataset(root)
        if dataset is None:
            report = CheckReport(str(root), "unknown")
            report.add("layout", root, "cannot tell the dataset from the layout (KADID-10k, PIPAL and TID2013 share "
                                       "one): pass dataset= (afine data check --dataset NAME), one of diffiqa, "
                                       "sriqa_bench, kadid10k, pipal, tid2013")
            return report
    dataset = normalize_dataset_name(dataset)
    report = CheckReport(str(root), dataset)
    if not root.is_dir():
        report.add("layout", root, "not a folder")
        return report
    sizes = _Sizes(report) if decode else None

    if dataset == "diffiqa":
        for split, folder in diffiqa_split_folders(root).items():
            scan = scan_diffiqa_folder(folder, report)
            if sizes is not None:
                pairs, singles = [], []
                for ref in scan.references:
                    rp = scan.reference_path(ref)
                    for v in scan.variants:
                        ep = scan.enhanced_path(ref, v)
                        if ep is not None and rp is not None:
                            pairs.append((ep, rp))
                        elif ep is not None:
                            singles.append(ep)
                    if rp is not None and not any(scan.enhanced_path(ref, v) for v in scan.variants):
                        singles.append(rp)
                sizes.compare(pairs, f"DiffIQA {split}", progress)
                for p in singles:
                    sizes.size(p)
    elif dataset == "sriqa_bench":
        scan = scan_sriqa(root, report)
        if sizes is not None:
            pairs, singles = [], []
            for g, names in scan.groups.items():
                ref = scan.reference_name(g)
                for n in names:
                    if ref is not None and n != ref:
                        pairs.append((scan.images[n], scan.images[ref]))
                    elif ref is None:
                        singles.append(scan.images[n])
            sizes.compare(pairs, "SRIQA-Bench", progress)
            for p in singles:
                sizes.size(p)
            lr = root / "LRImages"
            if lr.is_dir():
                for p in sorted(lr.iterdir()):
                    if p.is_file():
                        sizes.size(p)
    elif dataset in CLASSIC_DATASETS:
        scan = scan_classic(root, dataset, report)
        for split, path in scan.triplet_files.items():
            read_shipped_triplets(path, scan, report)
        if sizes is not None:
            pairs = []
            for recs in scan.records.values():
                for r in recs:
                    a, b = scan.path(r.image_name), scan.path(r.reference_name)
                    if a is not None and b is not None:
                        pairs.append((a, b))
            sizes.compare(pairs, dataset, progress)
    if sizes is not None:
        report.stats["images decoded"] = len(sizes.sizes)
    return report




class _CallableModule(type(os)):
    """Importing this submodule rebinds the package attribute ``dataset_scripts.check`` from the function to
    the module; keep ``dataset_scripts.check(...)`` working by making the module call :func:`check`."""

    def __call__(self, *args, **kwargs) -> CheckReport:
        return check(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
