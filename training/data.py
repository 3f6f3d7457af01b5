"""Training data for the A-FINE stages: triplets, augmentation, and a resumable step-indexed sampler.

Sources (each yields :class:`Triplet` records with the labels of ``dataset_scripts.schema``: ``g12`` =
P(img1 better than img2), ``g1ref``/``g2ref`` = P(img1/img2 better than ref), higher quality = better):

* :func:`triplets_from_dataset` - a triplet view of :func:`dataset_scripts.load` (``auto``: the shipped nlogn
  files of KADID-10k / PIPAL / TID2013 when present, see :func:`resolve_triplet_config`);
* :func:`triplets_from_txt` - an official ``Triplet.txt`` (``img1,img2,ref,g12[,g1ref,g2ref]``) with a folder
  holding the images (searched recursively by file name).

Images are read with the project's one loader (:mod:`modeling_afine.image_io`) and CLIP-normalised; they
keep their native size (spec/afine.md §2.5: the official pad-to-512 is only for collation and is cropped
away before the model). The same random dihedral transform (hflip, vflip, transpose; p = 0.5 each) is
applied to the three images of a triplet. The transform is a pure function of (seed, step, index), so a
resumed run sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

__all__ = [
    "Triplet",
    "TripletDataset",
    "StepBatchSampler",
    "collate_triplets",
    "triplets_from_dataset",
    "triplets_from_txt",
    "resolve_triplet_config",
    "SHIPPED_TRIPLET_DATASETS",
    "DataSourceError",
]

ImageSource = Union[str, bytes]


class DataSourceError(ValueError):
    """A training data source is missing, empty or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Triplet:
    """One training triplet. Images are file paths (or encoded bytes); ``nan`` marks an unknown label."""

    img1: ImageSource
    img2: ImageSource
    ref: ImageSource
    g12: float
    g1ref: float = math.nan
    g2ref: float = math.nan


def _label(value) -> float:
    return math.nan if value is None else float(value)


def _image_source(cell, column: str, row: int) -> ImageSource:
    if isinstance(cell, dict):
        path, data = cell.get("path"), cell.get("bytes")
        if path and os.path.isfile(path):
            return str(path)
        if data:
            return bytes(data)
        if path:
            raise DataSourceError(f"row {row}: {column} image {path} does not exist")
    if isinstance(cell, str):
        return cell
    raise DataSourceError(f"row {row}: {column} has no image path or bytes")


#: Datasets whose authors shipped nlogn triplet files (``{Train,Validation,Test}/Triplet/Triplet.txt``).
SHIPPED_TRIPLET_DATASETS = ("kadid10k", "pipal", "tid2013")


def resolve_triplet_config(dataset: str, data_dir: Union[str, os.PathLike], config: str,
                           split: str) -> tuple[str, Optional[str]]:
    """The concrete view behind ``config`` and a notice to print (or None).

    ``"auto"`` (the shipped stage configs' choice for every dataset) means: for KADID-10k, PIPAL and TID2013
    the authors' shipped nlogn triplets (``triplets_shipped``) when ``{Split}/Triplet/Triplet.txt`` exists for
    ``split``, else the triplets regenerated from the MOS files with the seed (``triplets``) and a notice
    saying so; for DiffIQA the ``triplets`` view (derived deterministically from the raw labels). Any other
    config name is used as given.
    """
    if config != "auto":
        return config, None
    from dataset_scripts.layouts import SPLIT_FOLDERS
    from dataset_scripts.loading import normalize_dataset_name

    name = normalize_dataset_name(dataset)
    if name not in SHIPPED_TRIPLET_DATASETS:
        return "triplets", None
    folder = {v: k for k, v in SPLIT_FOLDERS.items()}.get(split, split)
    shipped = Path(data_dir) / folder / "Triplet" / "Triplet.txt"
    if shipped.is_file():
        return "triplets_shipped", None
    return "triplets", (f"notice: {name} {split}: no shipped {shipped} - using nlogn triplets regenerated from the MOS "
                        "files with the seed (the official runs used the shipped files)")


def triplets_from_dataset(dataset: str, data_dir: Union[str, os.PathLike], *, config: str = "auto",
                          split: str = "train", seed: int = 0, cache_dir: Optional[str] = None,
                          notify=print) -> list[Triplet]:
    """Triplets of ``dataset_scripts.load(dataset, data_dir, config, split=split, seed=seed)``.

    Any config with the triplet schema works (``triplets``, ``triplets_shipped``, DiffIQA per-type configs),
    and ``"auto"`` (see :func:`resolve_triplet_config`; its notice goes to ``notify``). A missing split or an
    empty one raises :class:`DataSourceError` naming the dataset, the folder and the split.
    """
    import datasets

    import dataset_scripts

    config, notice = resolve_triplet_config(dataset, data_dir, config, split)
    if notice and notify is not None:
        notify(notice)
    try:
        ds = dataset_scripts.load(dataset, data_dir, name=config, split=split, seed=seed, cache_dir=cache_dir)
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise
        raise DataSourceError(f"{dataset} ({data_dir}) has no {split!r} split in config {config!r}: {exc}") from exc
    for column in ("img1", "img2", "ref", "g12"):
        if column not in ds.column_names:
            raise DataSourceError(f"{dataset} config {config!r} is not a triplet view (no {column!r} column)")
    ds = ds.select_columns([c for c in ("img1", "img2", "ref", "g12", "g1ref", "g2ref") if c in ds.column_names])
    for column in ("img1", "img2", "ref"):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    out = []
    for i, row in enumerate(ds):
        out.append(Triplet(
            _image_source(row["img1"], "img1", i), _image_source(row["img2"], "img2", i),
            _image_source(row["ref"], "ref", i), float(row["g12"]),
            _label(row.get("g1ref")), _label(row.get("g2ref")),
        ))
    if not out:
        raise DataSourceError(f"{dataset} ({data_dir}) config {config!r} split {split!r} has no triplets")
    return out


def _index_images(root: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    by_name: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            by_name.setdefault(f, full)
            by_name.setdefault(f.lower(), full)
            by_stem.setdefault(os.path.splitext(f)[0].lower(), []).append(full)
    return by_name, by_stem


def triplets_from_txt(path: Union[str, os.PathLike], image_root: Union[str, os.PathLike]) -> list[Triplet]:
    """Triplets of an official ``Triplet.txt`` whose image names are found (recursively) under ``image_root``.

    Names are matched exactly, then case-insensitively, then by stem (the official classic-dataset
    scripts write ``{stem}.png`` references for PIPAL/TID2013 whose files are ``.bmp``; spec §6.10).
    """
    from dataset_scripts.formats import LabelFormatError, read_triplet_file

    path, root = Path(path), Path(image_root)
    if not path.is_file():
        raise DataSourceError(f"{path}: triplet file does not exist")
    if not root.is_dir():
        raise DataSourceError(f"{root}: image folder does not exist")
    try:
        records = read_triplet_file(path)
    except LabelFormatError as exc:
        raise DataSourceError(str(exc)) from exc
    by_name, by_stem = _index_images(root)
    missing: list[str] = []

    def find(name: str) -> str:
        hit = by_name.get(name) or by_name.get(name.lower())
        if hit is None:
            stems = by_stem.get(os.path.splitext(name)[0].lower(), [])
            if len(stems) == 1:
                hit = stems[0]
        if hit is None:
            missing.append(name)
            return ""
        return hit

    out = [Triplet(find(r.img1_name), find(r.img2_name), find(r.ref_name), float(r.g12), _label(r.g1ref), _label(r.g2ref))
           for r in records]
    if missing:
        shown = ", ".join(sorted(set(missing))[:5])
        raise DataSourceError(f"{path}: {len(set(missing))} image name(s) not found under {root}: {shown}")
    if not out:
        raise DataSourceError(f"{path}: no triplets")
    return out


def _dihedral(images: Sequence[torch.Tensor], rng: random.Random, hflip: bool, rot: bool) -> list[torch.Tensor]:
    """BasicSR ``augment``: the same hflip / vflip / transpose (p = 0.5 each) on every image (CHW)."""
    do_h = hflip and rng.random() < 0.5
    do_v = rot and rng.random() < 0.5
    do_t = rot and rng.random() < 0.5
    out = []
    for x in images:
        if do_h:
            x = x.flip(-1)
        if do_v:
            x = x.flip(-2)
        if do_t:
            x = x.transpose(-1, -2)
        out.append(x.contiguous())
    return out


class TripletDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(index, step)`` keys from :class:`StepBatchSampler`.

    Returns ``{"img1", "img2", "ref"}`` as CLIP-normalised float tensors ``[3, H, W]`` at native size and
    ``{"g12", "g1ref", "g2ref"}`` floats (``nan`` = unknown).
    """

    def __init__(self, triplets: Sequence[Triplet], *, image_mean: Sequence[float], image_std: Sequence[float],
                 hflip: bool = True, rot: bool = True, seed: int = 0) -> None:
        self.triplets = list(triplets)
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
        self.hflip, self.rot, self.seed = bool(hflip), bool(rot), int(seed)

    def __len__(self) -> int:
        return len(self.triplets)

    def _load(self, source: ImageSource, what: str) -> torch.Tensor:
        from modeling_afine.image_io import load_image
        from modeling_afine.image_processing_afine import image_to_tensor

        tensor = image_to_tensor(load_image(source), what)
        return (tensor - self.mean) / self.std

    def __getitem__(self, key) -> dict:
        index, step = key if isinstance(key, tuple) else (key, 0)
        t = self.triplets[index]
        images = [self._load(t.img1, "img1"), self._load(t.img2, "img2"), self._load(t.ref, "ref")]
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) != 1:
            names = [s if isinstance(s, str) else "<bytes>" for s in (t.img1, t.img2, t.ref)]
            raise DataSourceError(f"triplet {index}: images differ in size {sorted(shapes)}: {names}")
        rng = random.Random(f"{self.seed}:{step}:{index}")
        img1, img2, ref = _dihedral(images, rng, self.hflip, self.rot)
        return {"img1": img1, "img2": img2, "ref": ref, "g12": t.g12, "g1ref": t.g1ref, "g2ref": t.g2ref}


def collate_triplets(items: list[dict]) -> dict:
    """Images stay lists (sizes may differ); labels become float32 tensors ``[b]``."""
    out = {k: [it[k] for it in items] for k in ("img1", "img2", "ref")}
    for k in ("g12", "g1ref", "g2ref"):
        out[k] = torch.tensor([float(it[k]) for it in items], dtype=torch.float32)
    return out


class StepBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, process-sharded batches: ``accumulation_steps`` micro-batches per optimizer step.

    Epoch e is a permutation of the dataset drawn from ``seed + e``; it is cut into global batches of
    ``batch_size * accumulation_steps * num_processes`` triplets (the incomplete tail is dropped, as
    ``drop_last=True``). Process r takes its contiguous ``batch_size * accumulation_steps`` slice of each and cuts
    it into ``accumulation_steps`` consecutive micro-batches of ``batch_size``. So the data of a step depends
    only on the global batch size: (processes, batch, accumulation) = (2, 2, 1), (1, 4, 1) and (1, 2, 2) see
    the same triplets. Steps ``start_step + 1 .. max_steps`` are yielded; every item is an ``(index, step)`` key
    (the augmentation is a function of it), so resuming at step s reproduces the uninterrupted run's data.
    """

    def __init__(self, num_items: int, batch_size: int, *, max_steps: int, start_step: int = 0, seed: int = 0,
                 num_processes: int = 1, process_index: int = 0, accumulation_steps: int = 1) -> None:
        self.n, self.batch_size, self.max_steps = int(num_items), int(batch_size), int(max_steps)
        self.start_step, self.seed = int(start_step), int(seed)
        self.world, self.rank = int(num_processes), int(process_index)
        self.accumulation_steps = int(accumulation_steps)
        if self.batch_size < 1 or self.accumulation_steps < 1:
            raise ValueError("batch_size and accumulation_steps must be >= 1")
        self.process_batch = self.batch_size * self.accumulation_steps
        self.global_batch = self.process_batch * self.world
        self.batches_per_epoch = self.n // self.global_batch
        if self.batches_per_epoch < 1:
            raise DataSourceError(
                f"the training data has {self.n} triplets, fewer than one global batch "
                f"({self.batch_size} per process x {self.accumulation_steps} accumulation steps x {self.world} processes)"
            )
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation_steps

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """The ``(index, step)`` keys of this process for 1-based ``step`` (all its micro-batches, in order)."""
        epoch, pos = divmod(step - 1, self.batches_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        start = pos * self.global_batch + self.rank * self.process_batch
        return [(i, step) for i in self._perm[start : start + self.process_batch]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step + 1, self.max_steps + 1):
            keys = self.batch_for_step(step)
            for j in range(self.accumulation_steps):
                yield keys[j * self.batch_size : (j + 1) * self.batch_size]
