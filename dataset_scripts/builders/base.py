"""Shared pieces of the dataset builders: the config class, cache fingerprint and the pre-flight check."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import datasets

from ..problems import CheckReport, DatasetCheckError, DatasetProblemWarning

logger = logging.getLogger("dataset_scripts")

#: Bumped whenever builder output changes, so old caches are not reused (1.1.0: ClassLabel label/type columns).
BUILDER_VERSION = "1.1.0"

#: File written next to a prepared cache: the folder fingerprint it was prepared from.
CACHE_MARKER = "afine_source.json"

#: Names that are files for sure (no stat needed to tell a symlinked file from a symlinked folder).
_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


@dataclass
class AfineDataConfig(datasets.BuilderConfig):
    """Builder config. ``seed`` drives seeded constructions (nlogn triplets). ``fingerprint`` is the folder
    fingerprint (computed by the builder when empty); it is not part of the cache key: a cache prepared from
    an older state of the same folder is re-prepared in place (see :meth:`AfineBuilder.download_and_prepare`)."""

    seed: int = 0
    fingerprint: str = ""


#: Threads that ``stat`` label folders at once (``os.stat`` releases the GIL; a DiffIQA tree has 18 big folders).
#: One per core, 2 to 4: the per-file Python work holds the GIL, so more threads than cores only fight over it
#: (DiffIQA-sized tree on 2 cores: 8 threads 3.2 s, 4 threads 2.3 s, 2 threads 1.8 s, 1 thread 1.9 s).
_FINGERPRINT_THREADS = max(2, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)))


def _folder_digest(folder: str, root: str, label_tree: bool) -> tuple[str, bytes, list[str]]:
    """``(relative path, digest, subfolders)`` of one folder: its file names and, in a label tree, each
    file's size and mtime (one ``scandir`` plus one ``stat`` per file, as ``datasets`` keys local files)."""
    rel = os.path.relpath(folder, root)
    rows: list[str] = []
    subdirs: list[str] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                lower = e.name.lower()
                if not lower.endswith(_FILE_SUFFIXES) and e.is_dir():
                    subdirs.append(e.path)
                elif label_tree:
                    try:
                        st = e.stat()
                        rows.append(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}")
                    except OSError as exc:  # e.g. a dangling link: its state is that it cannot be read
                        rows.append(f"{e.name}\0error {exc.errno}")
                else:
                    rows.append(e.name)
    except OSError as exc:
        return rel, f"unreadable: {exc.errno}".encode(), []
    rows.sort()
    digest = hashlib.sha1(f"{len(rows)}\n".encode() + "\n".join(rows).encode("utf-8", "surrogateescape")).digest()
    return rel, digest, subdirs


def _walk(root: Path, label_tree: bool, h, pool) -> None:
    """Hash every folder under ``root`` (level by level, the folders of a level in parallel), in path order."""
    digests: list[tuple[str, bytes]] = []
    level = [str(root)]
    while level:
        results = list(pool.map(lambda d: _folder_digest(d, str(root), label_tree), level))
        digests += [(rel, digest) for rel, digest, _ in results]
        level = sorted(sub for _, _, subs in results for sub in subs)
    for rel, digest in sorted(digests):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest + b"\n")


def fingerprint_files(roots: Iterable[Path], image_roots: Iterable[Path] = ()) -> str:
    """A fingerprint of a dataset folder that changes when any label file changes.

    * ``roots`` (label/MOS trees): every file's name, size and modification time (ns), as ``datasets`` keys
      local data files. A label JSON added, removed, renamed, replaced or **rewritten in place** (even with the
      same size) changes it.
    * ``image_roots``: file names only. Image pixels are not cached (the prepared tables hold file paths and
      images are decoded from the files on access), so an edited image needs no re-preparing.

    Cost: one ``scandir`` per folder and one ``stat`` per label file (537,624 for DiffIQA's labels), the
    folders ``stat``-ed by :data:`_FINGERPRINT_THREADS` threads; none per image file.
    """
    from concurrent.futures import ThreadPoolExecutor

    h = hashlib.sha1()
    with ThreadPoolExecutor(max_workers=_FINGERPRINT_THREADS, thread_name_prefix="afine-fingerprint") as pool:
        for label_tree, group in ((True, roots), (False, image_roots)):
            for root in group:
                root = Path(root)
                h.update(f"{'labels' if label_tree else 'images'} {root.name}\n".encode())
                if root.is_dir():
                    _walk(root, label_tree, h, pool)
                else:
                    h.update(b"absent\n")
    return h.hexdigest()[:16]


class AfineBuilder(datasets.GeneratorBasedBuilder):
    """Base of the A-FINE builders: cache reuse keyed on the folder fingerprint, empty splits, and a
    pre-flight scan that names every defective file.

    The cache key holds the data folder, the config and the seed, not the fingerprint: one cache folder per
    (folder, config, seed). When the folder changed since that cache was prepared (fingerprint in
    :data:`CACHE_MARKER`), :meth:`download_and_prepare` prepares it again in place, and caches of older
    :data:`BUILDER_VERSION` s of the same key are deleted, so stale caches do not pile up.
    """

    VERSION = datasets.Version(BUILDER_VERSION)
    BUILDER_CONFIG_CLASS = AfineDataConfig

    @classmethod
    def fingerprint_sources(cls, root: Path) -> tuple[list[Path], list[Path]]:
        """``(label roots, image roots)`` of a data folder for :func:`fingerprint_files`."""
        raise NotImplementedError

    def folder_fingerprint(self) -> str:
        """The fingerprint of ``data_dir`` (computed once per builder unless given in the config)."""
        if not self.config.fingerprint:
            labels, images = self.fingerprint_sources(Path(self.config.data_dir))
            self.config.fingerprint = fingerprint_files(labels, images)
        return self.config.fingerprint

    def preflight(self, report: CheckReport, needed: Optional[Iterable[str]] = None) -> None:
        """Refuse on problems in the ``needed`` parts (see :func:`raise_if_problems`); remember the warning about
        the others so that later loads from the cache repeat it."""
        self._side_warning = raise_if_problems(report, needed, view=self.config.name) or ""

    def download_and_prepare(self, output_dir=None, *args, download_mode=None, **kwargs):
        """``datasets``' ``download_and_prepare``; in the default cache a cache prepared from another state of
        the folder is prepared again (as with ``download_mode="force_redownload"``)."""
        managed = output_dir is None
        if managed:
            mode = datasets.DownloadMode(download_mode or datasets.DownloadMode.REUSE_DATASET_IF_EXISTS)
            prepared = os.path.isfile(os.path.join(self.cache_dir, datasets.config.DATASET_INFO_FILENAME))
            if mode == datasets.DownloadMode.REUSE_DATASET_IF_EXISTS and prepared and self._marker() != self.folder_fingerprint():
                logger.info("%s: %s changed since its cache was prepared; preparing again", self.dataset_name,
                            self.config.data_dir)
                download_mode = datasets.DownloadMode.FORCE_REDOWNLOAD
        if download_mode is not None and datasets.DownloadMode(download_mode) == datasets.DownloadMode.FORCE_REDOWNLOAD:
            # forget the split sizes read from the old cache: they are what changed
            info = self._info()
            info.builder_name, info.dataset_name = self.name, self.dataset_name
            info.config_name, info.version = self.config.name, self.config.version
            self.info = info
        self._side_warning = None
        super().download_and_prepare(output_dir, *args, download_mode=download_mode, **kwargs)
        if managed:
            if self._side_warning is None:  # reused: repeat what was found when the cache was prepared
                if self._marker_data().get("warning"):
                    _warn(self._marker_data()["warning"])
            else:
                self._write_marker()
            self._remove_old_versions()

    def _marker_data(self) -> dict:
        try:
            with open(os.path.join(self.cache_dir, CACHE_MARKER), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def _marker(self) -> Optional[str]:
        return self._marker_data().get("fingerprint")

    def _write_marker(self) -> None:
        data = {"data_dir": self.config.data_dir, "config": self.config.name, "seed": self.config.seed,
                "fingerprint": self.folder_fingerprint(), "builder_version": BUILDER_VERSION,
                "warning": self._side_warning or ""}
        tmp = os.path.join(self.cache_dir, CACHE_MARKER + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, os.path.join(self.cache_dir, CACHE_MARKER))

    def _remove_old_versions(self) -> None:
        """Delete this builder's caches of other builder versions under its dataset name: those of the same key
        (folder, config, seed), and those written before the fingerprint left the key (one per folder state).
        A cache is recognised as ours by its ``{version}/{version with _}/dataset_info.json`` naming our builder."""
        root = Path(self._cache_dir_root) / self.dataset_name
        current = str(self.config.version)
        try:
            keys = [k for k in root.iterdir() if k.is_dir()]
        except OSError:
            return
        for key_dir in keys:
            for version_dir in [v for v in key_dir.iterdir() if v.is_dir() and v.name != current]:
                info = version_dir / version_dir.name.replace(".", "_") / datasets.config.DATASET_INFO_FILENAME
                ours = key_dir.name == self.config_id  # same key: an old version's cache is dead anyway
                if not ours:
                    try:
                        with open(info, encoding="utf-8") as fh:
                            ours = json.load(fh).get("builder_name") == self.name
                    except (OSError, ValueError):
                        ours = False
                if ours:
                    shutil.rmtree(version_dir, ignore_errors=True)
                    logger.info("removed the cache of builder version %s: %s", version_dir.name, version_dir)
            if not any(key_dir.iterdir()):
                key_dir.rmdir()

    def _as_dataset(self, split=datasets.Split.TRAIN, in_memory: bool = False) -> datasets.Dataset:
        # datasets refuses to read a split with no rows ("corresponds to no data"): give an empty table with
        # the view's features instead (e.g. DiffIQA's SSY has no validation rows when no pair is S-S).
        info = self.info.splits.get(str(split)) if self.info.splits else None
        if info is not None and not info.num_examples:
            return datasets.Dataset.from_dict({c: [] for c in self.info.features}, features=self.info.features,
                                              info=self.info.copy(), split=str(split))
        return super()._as_dataset(split=split, in_memory=in_memory)


def shards_of(groups: list, n: int = 64) -> list[list]:
    """``groups`` cut into at most ``n`` contiguous chunks: a ``gen_kwargs`` list that ``datasets`` can spread
    over ``num_proc`` workers (concatenated back in order, so rows come out in the same order)."""
    if not groups:
        return []
    n = max(1, min(n, len(groups)))
    size = -(-len(groups) // n)
    return [groups[i:i + size] for i in range(0, len(groups), size)]


def require_data_dir(config: datasets.BuilderConfig, what: str) -> Path:
    if not config.data_dir:
        raise ValueError(f"{what}: pass data_dir=<folder with the official layout>")
    root = Path(config.data_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: data_dir {root} is not a folder")
    return root


def raise_if_problems(report: CheckReport, needed: Optional[Iterable[str]] = None, view: str = "") -> Optional[str]:
    """Raise :class:`DatasetCheckError` for the problems in the ``needed`` parts of the folder (all problems
    when ``needed`` is None). Problems elsewhere do not stop the view, which does not read those files: they
    are warned about (:class:`DatasetProblemWarning`), naming every file; the warning text is returned."""
    if needed is None:
        blocking, other = report, CheckReport(report.root, report.dataset)
    else:
        blocking, other = report.split(needed)
    if not blocking.ok:
        raise DatasetCheckError(blocking)
    if other.ok:
        return None
    parts = ", ".join(sorted({q for p in other.problems for q in p.part.split(",")} - set(needed or ())))
    msg = (f"{report.dataset} at {report.root}: view {view!r} does not read {parts}, where "
           f"{len(other.problems)} problem(s) were found (the views that read it refuse to load):\n"
           + "\n".join(f"  {p}" for p in other.problems[:50])
           + (f"\n  ... and {len(other.problems) - 50} more (run 'afine data check')" if len(other.problems) > 50 else ""))
    _warn(msg)
    return msg


def _warn(msg: str) -> None:
    logger.info(msg)
    warnings.warn(msg, DatasetProblemWarning, stacklevel=3)


def opt_str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
