"""Install the ``afine`` evaluate metric into evaluate's module cache, so ``evaluate.load("afine")`` works from
any folder, offline.

``evaluate.load("afine")`` first looks for ``./afine/afine.py`` (or ``./afine.py``), then asks the Hub for
``evaluate-metric/afine``, and when that fails (offline, or no such repository) it falls back to the newest
cached copy under ``$HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--afine/<sha256>/afine.py``.
:func:`install_metric` writes that cached copy with evaluate's own functions, exactly as evaluate writes it
after downloading a metric from the Hub: the same folder layout, ``__init__.py`` files, ``afine.json``
metadata and content hash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["METRIC_NAME", "CACHE_NAME", "metric_source", "install_metric"]

METRIC_NAME = "afine"
#: the name evaluate's cache fallback uses for ``evaluate.load("afine")``
CACHE_NAME = f"evaluate-metric/{METRIC_NAME}"


def metric_source() -> Path:
    """The metric module shipped with the package (the same file as ``spaces/afine/afine.py``)."""
    return Path(__file__).resolve().with_name("evaluate_metric.py")


def install_metric(source: Optional[os.PathLike] = None, modules_cache: Optional[os.PathLike] = None) -> Path:
    """Copy the metric module into evaluate's module cache; returns the path of the cached ``afine.py``.

    Args:
        source: the metric file (default: :func:`metric_source`).
        modules_cache: evaluate's dynamic-modules folder (default: ``$HF_MODULES_CACHE/evaluate_modules``,
            what ``evaluate.load`` uses).

    Installing again after an update adds the new version beside the old one and makes it the newest, which is
    the one evaluate picks.
    """
    from evaluate import loading

    src = Path(source) if source is not None else metric_source()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: metric module not found")
    src = src.resolve()
    dynamic = str(modules_cache) if modules_cache is not None else loading.init_dynamic_modules()
    imports = loading.get_imports(str(src))
    local_imports = loading._download_additional_modules(
        name=CACHE_NAME, base_path=str(src.parent), imports=imports, download_config=loading.DownloadConfig()
    )
    module_path, module_hash = loading._create_importable_file(
        local_path=str(src),
        local_imports=local_imports,
        additional_files=[],
        dynamic_modules_path=dynamic,
        module_namespace="metrics",
        name=CACHE_NAME,
        download_mode=loading.DownloadMode.REUSE_DATASET_IF_EXISTS,
    )
    installed = Path(dynamic, "metrics", CACHE_NAME.replace("/", "--"), module_hash, f"{METRIC_NAME}.py")
    if not installed.is_file():
        raise RuntimeError(f"evaluate did not write {installed} (module {module_path})")
    os.utime(installed)  # evaluate picks the most recently modified cached version
    return installed
