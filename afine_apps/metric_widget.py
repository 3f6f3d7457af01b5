"""The metric Space's page (``spaces/afine/app.py``): evaluate's metric widget, rebuilt for gradio 6.

``evaluate.utils.launch_gradio_widget`` (evaluate 0.4.6) builds its page with ``gr.inputs.Dataframe`` and
``gr.outputs.Textbox``, which gradio removed in 4.0, and its table input only suits number and text features.
:func:`build_metric_widget` keeps that widget's layout: the title ``Metric: afine``, the metric's description,
an input, ``metric.compute`` on it, the result, and the metric card (``README.md`` without its YAML header,
read with evaluate's own ``parse_readme``) below; the input is an image pair, decoded by the metric itself.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Optional

from .launching import LOWER_IS_BETTER, max_pixels, queue
from .pair import RESIZE_LABEL
from .zerogpu import gpu

__all__ = ["build_metric_widget", "REFUSED"]

#: The one answer to a file input that was not uploaded to the page, whatever the path and whether it exists.
REFUSED = "This image was not uploaded to this page. Please upload the image file and try again."


#: The loader's closing hint that names a server setting (": set AFINE_MAX_IMAGE_PIXELS (or max_pixels=) to ...").
_SETTING_HINT = re.compile(r"[:;,]?\s*(?:\(|set\s+)?\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b.*$")


def _client_text(message: str, paths) -> str:
    """An error for the page: files named by their upload names (no server path), no server setting names,
    HTML shown as text."""
    for path in paths:
        message = message.replace(path, os.path.basename(path) or "upload")
    return html.escape(_SETTING_HINT.sub("", message).rstrip(" ;,:"), quote=False)


def build_metric_widget(metric, readme: Optional[os.PathLike] = None):
    """Build (do not launch) the widget around a loaded ``evaluate`` A-FINE metric.

    API: ``/compute`` takes ``(prediction, reference, resize_reference)`` (files) and returns the dict of
    ``metric.compute`` (per-image lists and their means).
    """
    import gradio as gr
    from evaluate.utils.gradio import parse_readme

    def _uploaded(path) -> bool:
        # only files this page received through gradio's upload route (no file-system access for the others):
        # gradio hands a bare {"path": ...} dict without its "meta" marker to the handler unchecked
        if not isinstance(path, str) or not path or "\0" in path:
            return False
        target = os.path.normpath(os.path.abspath(path))
        return any(os.path.normpath(os.path.abspath(p)) == target for p in list(demo.upload_file_set))

    @gpu
    def _compute(prediction, reference, resize_reference):
        if not prediction or not reference:
            raise gr.Error("Please upload the prediction (image under test) and its reference.")
        if not (_uploaded(prediction) and _uploaded(reference)):
            raise gr.Error(REFUSED)
        try:  # max_pixels: the page's upload limit, checked from the headers before decoding
            return metric.compute(predictions=[prediction], references=[reference],
                                  resize_reference=bool(resize_reference), max_pixels=max_pixels())
        except (ValueError, OSError) as exc:  # ImageLoadError is a ValueError
            raise gr.Error(_client_text(str(exc), (prediction, reference))) from exc

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
    return queue(demo)
