"""A-FINE datasets for the Hugging Face stack: builders, label tools, checker and export.

Quick start::

    import dataset_scripts
    pairs = dataset_scripts.load("sriqa_bench", data_dir="/data/SRIQA-Bench", name="pairs", split="test")

See ``docs/datasets.md`` for every dataset, config and tool. Importing this package is cheap; the
``datasets`` library is imported on first use of :func:`load`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load", "check", "get_builder", "config_names", "DATASET_NAMES", "__version__"]

from .names import DATASET_NAMES  # noqa: E402


def load(*args, **kwargs):
    """Load a dataset; see :func:`dataset_scripts.loading.load`."""
    from .loading import load as _load

    return _load(*args, **kwargs)


def get_builder(*args, **kwargs):
    """An instantiated builder; see :func:`dataset_scripts.loading.get_builder`."""
    from .loading import get_builder as _get

    return _get(*args, **kwargs)


def config_names(dataset: str) -> list[str]:
    """Config names of a dataset; see :func:`dataset_scripts.loading.config_names`."""
    from .loading import config_names as _names

    return _names(dataset)


def check(*args, **kwargs):
    """Check a dataset folder; see :func:`dataset_scripts.check.check`."""
    from .check import check as _check

    return _check(*args, **kwargs)
