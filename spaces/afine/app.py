"""The `afine` metric Space: evaluate's metric page for A-FINE (image pair in, metric.compute out).

Settings from the environment: AFINE_MODEL (converted dir, Hub repo id or afine.pth; default weights
otherwise), AFINE_DEVICE, AFINE_DTYPE, AFINE_BATCH_SIZE, AFINE_MAX_IMAGE_PIXELS, GRADIO_SERVER_NAME/PORT.
"""

try:  # Hugging Face's ZeroGPU package must be imported before torch when it is there
    import spaces  # noqa: F401
except ImportError:
    pass

import os
from pathlib import Path

import evaluate

from afine_apps.launching import serve
from afine_apps.metric_widget import build_metric_widget
from afine_apps.zerogpu import on_zerogpu

HERE = Path(__file__).resolve().parent

metric = evaluate.load(
    str(HERE / "afine.py"),
    model=os.environ.get("AFINE_MODEL") or None,
    device=os.environ.get("AFINE_DEVICE") or ("cuda" if on_zerogpu() else None),
    dtype=os.environ.get("AFINE_DTYPE") or None,
    batch_size=int(os.environ.get("AFINE_BATCH_SIZE") or 8),
)
demo = build_metric_widget(metric, HERE / "README.md")

if __name__ == "__main__":
    serve(demo)
