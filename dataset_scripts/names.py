"""Dataset names and their aliases (no heavy imports: used by the label tools and the checker)."""

from __future__ import annotations

__all__ = ["DATASET_NAMES", "normalize_dataset_name"]

#: Canonical dataset names.
DATASET_NAMES: tuple[str, ...] = ("diffiqa", "sriqa_bench", "kadid10k", "pipal", "tid2013")

_ALIASES = {
    "diffiqa": "diffiqa", "diff_iqa": "diffiqa",
    "sriqa_bench": "sriqa_bench", "sriqa-bench": "sriqa_bench", "sriqabench": "sriqa_bench", "sriqa": "sriqa_bench",
    "kadid10k": "kadid10k", "kadid-10k": "kadid10k", "kadid": "kadid10k", "kadid_10k": "kadid10k",
    "pipal": "pipal",
    "tid2013": "tid2013", "tid": "tid2013",
}


def normalize_dataset_name(dataset: str) -> str:
    """Canonical dataset name (``diffiqa``, ``sriqa_bench``, ``kadid10k``, ``pipal``, ``tid2013``) from an alias."""
    key = dataset.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _ALIASES[key]
