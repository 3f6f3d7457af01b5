"""The one-call entry point :func:`load`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import datasets

from .builders import BUILDERS
from .builders.base import BUILDER_VERSION
from .names import DATASET_NAMES, normalize_dataset_name

__all__ = ["load", "get_builder", "config_names", "DATASET_NAMES", "normalize_dataset_name"]

PathLike = Union[str, os.PathLike]

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
    streaming: bool = False,
    num_proc: Optional[int] = None,
    download_mode: Optional[Union[str, "datasets.DownloadMode"]] = None,
) -> Union[datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict]:
    """Load an A-FINE dataset from a folder in its official layout, in one call.

    Args:
        dataset: ``"diffiqa"``, ``"sriqa_bench"``, ``"kadid10k"``, ``"pipal"`` or ``"tid2013"``.
        data_dir: the dataset folder (official layout, see ``docs/datasets.md``).
        name / config: the config (view), e.g. ``"pairs"``; case-insensitive; default per dataset.
        split: a split name (``"train"``, ``"validation"``, ``"test"``, ``"full"``) to get one ``Dataset``;
            default: a ``DatasetDict`` with every split present. A split folder whose view has no rows (e.g.
            DiffIQA ``SSY`` in a validation folder without S-S pairs) gives an empty ``Dataset`` with the
            view's features.
        cache_dir: ``datasets`` cache root (default: the normal HF datasets cache).
        seed: seed of the randomised constructions (classic nlogn triplets).
        streaming: as in ``datasets.load_dataset``: nothing is prepared or cached; rows are generated from the
            folder while iterating (an ``IterableDataset`` / ``IterableDatasetDict``).
        num_proc: processes used to prepare (rows are generated per group of references in parallel; the
            order of the rows is the same as with one process).
        download_mode: as in ``datasets.load_dataset``; ``"force_redownload"`` prepares the cache again
            even if it looks current.

    The dataset is prepared into the cache once; later calls with the same folder, config and seed reuse
    it, and a cache prepared from an older state of the folder is prepared again in place (the folder
    fingerprint: the size and modification time of every label/MOS file, as ``datasets`` keys local files,
    so a label rewritten in place is noticed too, and the image file names; see
    :func:`dataset_scripts.builders.base.fingerprint_files`). Raises
    :class:`~dataset_scripts.problems.DatasetCheckError` listing every problem the view depends on; problems
    in parts of the folder the view does not read are warned about
    (:class:`~dataset_scripts.problems.DatasetProblemWarning`).
    """
    if name is not None and config is not None and name != config:
        raise ValueError("pass the config as name= or config=, not both")
    builder = get_builder(dataset, data_dir, name or config, cache_dir=cache_dir, seed=seed)
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare(download_mode=download_mode, num_proc=num_proc)
    return builder.as_dataset(split=split)
