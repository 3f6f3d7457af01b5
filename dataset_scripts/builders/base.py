"""Shared pieces of the dataset builders: the config class, cache fingerprint and the pre-flight check."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import datasets

from ..problems import CheckReport, DatasetCheckError

#: Bumped whenever builder output changes, so old caches are not reused.
BUILDER_VERSION = "1.0.0"


@dataclass
class AfineDataConfig(datasets.BuilderConfig):
    """Builder config. ``seed`` drives seeded constructions (nlogn triplets); ``fingerprint`` is a hash of
    the label/MOS files (set by :func:`dataset_scripts.load`) so an edited folder is re-prepared."""

    seed: int = 0
    fingerprint: str = ""


def fingerprint_files(roots: Iterable[Path], image_roots: Iterable[Path] = ()) -> str:
    """Hash of (relative path, size, mtime) of every file under ``roots`` and of the file names under
    ``image_roots`` (names only, no stat, so large image folders stay cheap)."""
    h = hashlib.sha1()
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for root in image_roots:
        root = Path(root)
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            h.update(("\n".join([os.path.relpath(dirpath, root)] + sorted(filenames)) + "\n").encode())
    return h.hexdigest()[:16]


def require_data_dir(config: datasets.BuilderConfig, what: str) -> Path:
    if not config.data_dir:
        raise ValueError(f"{what}: pass data_dir=<folder with the official layout>")
    root = Path(config.data_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: data_dir {root} is not a folder")
    return root


def raise_if_problems(report: CheckReport) -> None:
    if not report.ok:
        raise DatasetCheckError(report)


def opt_str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
