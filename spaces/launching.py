"""Command-line options, model loading and error messages shared by the Gradio apps."""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOWER_IS_BETTER = (
    "**Every A-FINE number is lower-is-better.** `score` is 0–100 (0 best); `fidelity` and both "
    "`naturalness` values are calibrated to (-2, 2); `score_raw` = λ·N(distorted) + F is unbounded."
)


def default_host() -> str:
    """``$GRADIO_SERVER_NAME``, else ``0.0.0.0`` inside a Hugging Face Space (``SYSTEM=spaces``), else 127.0.0.1."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SYSTEM") == "spaces" else "127.0.0.1")


def base_parser(description: str, *, model: bool = True, port: int = 7860) -> argparse.ArgumentParser:
    """``--host``, ``--port``, ``--share`` (off by default) and, with ``model``, the model options.

    ``--port`` defaults to ``$GRADIO_SERVER_PORT`` if set, else ``port``; ``--host`` to :func:`default_host`.
    """
    parser = argparse.ArgumentParser(description=description)
    if model:
        parser.add_argument("--model", default=None,
                            help="converted model dir, Hub repo id or official afine.pth "
                                 "(default: the package default weights)")
        parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
        parser.add_argument("--dtype", default=None, help="backbone dtype: float32 (default), bfloat16, float16")
        parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--host", default=default_host(), help="server address (0.0.0.0 to listen on all interfaces)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT") or port))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    return parser


def load_scorer(args: argparse.Namespace):
    """An :class:`~modeling_afine.scoring.AfineScorer` from ``--model/--device/--dtype/--batch-size``."""
    from modeling_afine.scoring import AfineScorer

    return AfineScorer(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)


def launch(demo, args: argparse.Namespace, *, allowed_paths: Optional[Sequence[str]] = None, block: bool = True):
    """``demo.launch`` with the parsed ``--host/--port/--share``; returns what ``launch`` returns."""
    return demo.launch(server_name=args.host, server_port=args.port, share=bool(args.share),
                       allowed_paths=list(allowed_paths or []), prevent_thread_lock=not block)


def user_error(exc: BaseException):
    """A ``gr.Error`` carrying ``exc``'s message (image-loading, size and input errors are shown to the user)."""
    import gradio as gr

    return gr.Error(str(exc) or type(exc).__name__)
