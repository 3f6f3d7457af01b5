"""Hugging Face Spaces / ``evaluate`` front-ends for A-FINE (all scores: lower is better).

* :func:`load_metric` - the ``evaluate`` metric (``spaces/metrics/afine``), loaded by absolute path.
* ``spaces.app_demo`` - score one (distorted, reference) pair, or naturalness only (``api_name="score"``).
* ``spaces.app_compare`` - A/B: which of two candidates A-FINE prefers against one reference (``"compare"``).
* ``spaces.app_annotate`` - DiffIQA-protocol human annotation writing official label JSONs (no model needed).

Importing this package is cheap: gradio and evaluate are imported only by the apps / :func:`load_metric`.
See ``docs/spaces.md``.
"""

from __future__ import annotations

import os

__all__ = ["METRIC_PATH", "load_metric"]

#: Absolute path of the ``evaluate`` metric folder (``.../spaces/metrics/afine``).
METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "afine")


def load_metric(**kwargs):
    """``evaluate.load(METRIC_PATH, **kwargs)``: e.g. ``load_metric(model="./afine-model", device="cpu")``.

    Keyword arguments the metric understands: ``model``, ``device``, ``dtype``, ``batch_size``,
    ``resize_reference`` (defaults for every ``compute``), plus evaluate's own (``experiment_id``, ...).
    """
    import evaluate

    return evaluate.load(METRIC_PATH, **kwargs)


def gradio_auto_wrap(fn):
    """Identity shim. gradio does ``import spaces`` (meaning the Hugging Face ZeroGPU package of the same name)
    and, when it runs inside a Space, calls ``spaces.gradio_auto_wrap(fn)``; this package shadows that name, so
    it provides a no-op to keep gradio working. See ``docs/spaces.md`` ("Name clash")."""
    return fn
