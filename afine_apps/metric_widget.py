"""The metric Space's page (``spaces/afine/app.py``): evaluate's metric widget, rebuilt for gradio 6.

``evaluate.utils.launch_gradio_widget`` (evaluate 0.4.6) builds its page with ``gr.inputs.Dataframe`` and
``gr.outputs.Textbox``, which gradio removed in 4.0, and its table input only suits number and text features.
:func:`build_metric_widget` keeps that widget's layout: the title ``Metric: afine``, the metric's description,
an input, ``metric.compute`` on it, the result, and the metric card (``README.md`` without its YAML header,
read with evaluate's own ``parse_readme``) below; the input is an image pair, decoded by the metric itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .launching import LOWER_IS_BETTER, client_message, max_pixels, queue
from .pair import RESIZE_LABEL
from .upload_guard import REFUSED, guard_uploads
from .zerogpu import gpu

__all__ = ["build_metric_widget", "REFUSED"]


def build_metric_widget(metric, readme: Optional[os.PathLike] = None):
    """Build (do not launch) the widget around a loaded ``evaluate`` A-FINE metric.

    API: ``/compute`` takes ``(prediction, reference, resize_reference)`` (files) and returns the dict of
    ``metric.compute`` (per-image lists and their means).
    """
    import gradio as gr
    from evaluate.utils.gradio import parse_readme

    @gpu
    def _compute(prediction, reference, resize_reference):
        # only files uploaded to this page get here: guard_uploads (below) is the demo's boundary, on this page too
        if not prediction or not reference:
            raise gr.Error("Please upload the prediction (image under test) and its reference.")
        try:  # max_pixels: the page's upload limit, checked from the headers before decoding
            return metric.compute(predictions=[prediction], references=[reference],
                                  resize_reference=bool(resize_reference), max_pixels=max_pixels())
        except (ValueError, OSError) as exc:  # ImageLoadError is a ValueError
            raise gr.Error(client_message(str(exc), (prediction, reference))) from exc

    article = parse_readme(Path(readme)) if readme is not None else ""
    # delete_cache: uploads older than an hour are deleted every 10 minutes (and all of them at shutdown)
    with gr.Blocks(title=f"Metric: {metric.name}", delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# Metric: {metric.name}\n\n{metric.info.description}\n\n{LOWER_IS_BETTER}")
        with gr.Row():
            prediction = gr.File(type="filepath", file_types=["image"], label="predictions: the image under test")
            reference = gr.File(type="filepath", file_types=["image"], label="references: its reference")
        resize = gr.Checkbox(value=False, label=RESIZE_LABEL)
        button = gr.Button("Compute", variant="primary")
        result = gr.JSON(label=metric.name)
        button.click(_compute, inputs=[prediction, reference, resize], outputs=[result], api_name="compute")
        gr.Markdown(article)
    guard_uploads(demo)
    return queue(demo)
