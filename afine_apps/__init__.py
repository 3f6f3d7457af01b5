"""Code shared by the A-FINE Hugging Face Spaces in ``spaces/`` (every A-FINE number: lower is better).

The ``spaces/`` folder of the repository holds Space repositories (folders to upload as they are), not an
importable package; their ``app.py`` files import this package:

* ``spaces/afine/``          the ``evaluate`` metric Space: :mod:`afine_apps.metric_widget`; the metric module
  itself is ``spaces/afine/afine.py`` (shipped here as ``evaluate_metric.py``), installed into evaluate's
  module cache by ``python -m afine_apps install-metric`` (:func:`afine_apps.metric_cache.install_metric`);
* ``spaces/afine-demo/``     the demo: score a pair, A vs B, rank a gallery, naturalness (:mod:`afine_apps.demo`);
* ``spaces/afine-annotate/`` human annotation in the DiffIQA protocol (:mod:`afine_apps.annotate`).

Importing this package is cheap: gradio and evaluate are imported only by the apps. See ``docs/spaces.md``.
"""

__all__ = ["install_metric", "metric_source"]


def __getattr__(name: str):
    if name in ("install_metric", "metric_source"):
        from . import metric_cache

        return getattr(metric_cache, name)
    raise AttributeError(f"module 'afine_apps' has no attribute {name!r}")
