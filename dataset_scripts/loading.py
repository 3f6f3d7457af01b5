"""The one-call entry point :func:`load`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import datasets

from .builders import BUILDERS
from .builders.base import BUILDER_VERSION, fingerprint_files
from .layouts import SPLIT_FOLDERS, diffiqa_labels_dir, diffiqa_split_folders

__all__ = ["load", "get_builder", "config_names", "DATASET_NAMES", "normalize_dataset_name"]

PathLike = Union[str, os.PathLike]

_ALIASES = {
    "diffiqa": "diffiqa", "diff_iqa": "diffiqa",
    "sriqa_bench": "sriqa_bench", "sriqa-bench": "sriqa_bench", "sriqabench": "sriqa_bench", "sriqa": "sriqa_bench",
    "kadid10k": "kadid10k", "kadid-10k": "kadid10k", "kadid": "kadid10k", "kadid_10k": "kadid10k",
    "pipal": "pipal",
    "tid2013": "tid2013", "tid": "tid2013",
}
#: Canonical dataset names accepted by :func:`load`.
DATASET_NAMES: tuple[str, ...] = tuple(BUILDERS)


def normalize_dataset_name(dataset: str) -> str:
    """Canonical dataset name (``diffiqa``, ``sriqa_bench``, ``kadid10k``, ``pipal``, ``tid2013``) from an alias."""
    key = dataset.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _ALIASES[key]


def config_names(dataset: str) -> list[str]:
    """The config names of a dataset, e.g. ``config_names("sriqa_bench")``."""
    return [c.name for c in BUILDERS[normalize_dataset_name(dataset)].BUILDER_CONFIGS]


def _config_name(dataset: str, name: Optional[str]) -> str:
    cls = BUILDERS[dataset]
    if name is None:
        return cls.DEFAULT_CONFIG_NAME
    names = [c.name for c in cls.BUILDER_CONFIGS]
    for n in names:
        if n.lower() == name.lower():
            return n
    raise ValueError(f"unknown config {name!r} for {dataset}; expected one of {', '.join(names)}")


def _fingerprint(dataset: str, root: Path) -> str:
    if dataset == "diffiqa":
        folders = list(diffiqa_split_folders(root).values())
        labels = [diffiqa_labels_dir(f) for f in folders]
        # an unlabelled generator tree keeps 01..06/ and Original/ directly in the folder
        return fingerprint_files(labels, [f / "images" if (f / "images").is_dir() else f for f in folders])
    if dataset == "sriqa_bench":
        return fingerprint_files([root / "labels", root / "MOS", root / "MOS_Reg", root / "MOS_Gen"], [root / "images"])
    return fingerprint_files([root / s for s in SPLIT_FOLDERS], [root / "images"])


def get_builder(
    dataset: str,
    data_dir: PathLike,
    name: Optional[str] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    seed: int = 0,
) -> datasets.DatasetBuilder:
    """An instantiated (not yet prepared) builder for ``dataset``/``name`` over ``data_dir``."""
    dataset = normalize_dataset_name(dataset)
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a folder")
    cls = BUILDERS[dataset]
    return cls(
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        config_name=_config_name(dataset, name),
        dataset_name=dataset,
        hash=BUILDER_VERSION.replace(".", "_"),
        data_dir=str(root),
        seed=int(seed),
        fingerprint=_fingerprint(dataset, root),
    )


def load(
    dataset: str,
    data_dir: PathLike,
    name: Optional[str] = None,
    *,
    config: Optional[str] = None,
    split: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    seed: int = 0,
) -> Union[datasets.Dataset, datasets.DatasetDict]:
    """Load an A-FINE dataset from a folder in its official layout, in one call.

    Args:
        dataset: ``"diffiqa"``, ``"sriqa_bench"``, ``"kadid10k"``, ``"pipal"`` or ``"tid2013"``.
        data_dir: the dataset folder (official layout, see ``docs/datasets.md``).
        name / config: the config (view), e.g. ``"pairs"``; case-insensitive; default per dataset.
        split: a split name (``"train"``, ``"validation"``, ``"test"``, ``"full"``) to get one ``Dataset``;
            default: a ``DatasetDict`` with every split present.
        cache_dir: ``datasets`` cache root (default: the normal HF datasets cache).
        seed: seed of the randomised constructions (classic nlogn triplets).

    The dataset is prepared into the cache once; later calls with the same folder, config and seed reuse
    it. The cache key includes a fingerprint of the label/MOS files and image file names, so an edited
    folder is prepared again. Raises :class:`~dataset_scripts.problems.DatasetCheckError` listing every
    problem found in the folder.
    """
    if name is not None and config is not None and name != config:
        raise ValueError("pass the config as name= or config=, not both")
    builder = get_builder(dataset, data_dir, name or config, cache_dir=cache_dir, seed=seed)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)
