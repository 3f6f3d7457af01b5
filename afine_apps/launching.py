"""Options, environment, model loading, upload limits and launching shared by the A-FINE Gradio apps.

Every Space in ``spaces/`` reads its settings from the environment (a Space has no command line), and the
``python -m afine_apps ...`` launchers map their options onto the same names:

==========================  ==========================================================================
``AFINE_MODEL``             converted model dir, Hub repo id or official ``afine.pth`` (default weights)
``AFINE_DEVICE``            ``cpu``, ``cuda``, ... (default: best available; ``cuda`` on ZeroGPU)
``AFINE_DTYPE``             backbone dtype ``float32`` (default), ``bfloat16``, ``float16``
``AFINE_BATCH_SIZE``        images per forward pass (default 8)
``AFINE_MAX_IMAGE_PIXELS`` uploads with more pixels (width x height) are refused before decoding
                            (default 16,777,216 = 4096 x 4096 in the apps; the same variable sets
                            the library's own, higher default limit)
``AFINE_CONCURRENCY``       how many requests run at once (gradio queue concurrency limit, default 1)
``AFINE_QUEUE_SIZE``        how many requests may wait (default 32)
``GRADIO_SERVER_NAME``      host (default ``0.0.0.0`` inside a Space, ``127.0.0.1`` elsewhere)
``GRADIO_SERVER_PORT``      port (default 7860)
==========================  ==========================================================================
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = [
    "LOWER_IS_BETTER",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "default_host",
    "base_parser",
    "scorer_from_env",
    "load_scorer",
    "load_upload",
    "queue",
    "launch",
    "user_error",
    "serve",
]

LOWER_IS_BETTER = (
    "**Every A-FINE number is lower-is-better.** `score` is 0–100 (0 best); `fidelity` and both "
    "`naturalness` values are calibrated to (-2, 2); `score_raw` = λ·N(distorted) + F is unbounded."
)

#: Default upload limit of the apps (pixels); the library's own limit is much higher.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Upload limit in bytes handed to ``launch(max_file_size=...)``.
MAX_FILE_SIZE = os.environ.get("AFINE_MAX_FILE_SIZE", "64mb")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def max_pixels() -> int:
    """The apps' upload limit in pixels: ``$AFINE_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    return _env_int("AFINE_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)


def default_host() -> str:
    """``$GRADIO_SERVER_NAME``, else ``0.0.0.0`` inside a Hugging Face Space (``SYSTEM=spaces``), else 127.0.0.1."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SYSTEM") == "spaces" else "127.0.0.1")


def base_parser(description: str, *, model: bool = True, port: int = 7860) -> argparse.ArgumentParser:
    """``--host``, ``--port``, ``--share`` (off by default) and, with ``model``, the model options.

    Defaults come from the environment (see the module doc), so a Space and a command line behave alike.
    """
    parser = argparse.ArgumentParser(description=description)
    if model:
        parser.add_argument("--model", default=os.environ.get("AFINE_MODEL") or None,
                            help="converted model dir, Hub repo id or official afine.pth "
                                 "(default: $AFINE_MODEL, else the package default weights)")
        parser.add_argument("--device", default=os.environ.get("AFINE_DEVICE") or None,
                            help="cpu, cuda, mps (default: $AFINE_DEVICE, else best available)")
        parser.add_argument("--dtype", default=os.environ.get("AFINE_DTYPE") or None,
                            help="backbone dtype: float32 (default), bfloat16, float16")
        parser.add_argument("--batch-size", type=int, default=_env_int("AFINE_BATCH_SIZE", 8))
    parser.add_argument("--host", default=default_host(), help="server address (0.0.0.0 to listen on all interfaces)")
    parser.add_argument("--port", type=int, default=_env_int("GRADIO_SERVER_PORT", port))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    return parser


def load_scorer(args: argparse.Namespace):
    """An :class:`~modeling_afine.scoring.AfineScorer` from ``--model/--device/--dtype/--batch-size``.

    On ZeroGPU hardware (``SPACES_ZERO_GPU`` set) the default device is ``cuda``: the ``spaces`` package
    attaches a GPU to each call decorated with :func:`afine_apps.zerogpu.gpu`.
    """
    from modeling_afine.scoring import AfineScorer

    from .zerogpu import on_zerogpu

    device = args.device or ("cuda" if on_zerogpu() else None)
    return AfineScorer(args.model, device=device, dtype=args.dtype, batch_size=args.batch_size)


def scorer_from_env():
    """The scorer a Space uses: ``AFINE_MODEL`` / ``AFINE_DEVICE`` / ``AFINE_DTYPE`` / ``AFINE_BATCH_SIZE``."""
    return load_scorer(base_parser("A-FINE").parse_args([]))


def load_upload(path, what: str):
    """Decode one uploaded file with the project's one image loader, refusing it before decoding when it has
    more than :func:`max_pixels` pixels. Raises ``ValueError`` (nothing uploaded) or ``ImageLoadError``."""
    from modeling_afine.image_io import load_image

    if path is None or (isinstance(path, str) and not path):
        raise ValueError(f"Please upload the {what} image.")
    if isinstance(path, dict):  # a gradio FileData dict (API clients)
        path = path.get("path")
    return load_image(getattr(path, "name", path), max_pixels=max_pixels())


def queue(demo, concurrency: int = 1):
    """Gradio's queue with a concurrency limit (``$AFINE_CONCURRENCY``, else ``concurrency``) and a bounded wait
    list (``$AFINE_QUEUE_SIZE``, default 32), so parallel users cannot exhaust memory."""
    return demo.queue(default_concurrency_limit=max(1, _env_int("AFINE_CONCURRENCY", concurrency)),
                      max_size=max(1, _env_int("AFINE_QUEUE_SIZE", 32)))


def launch(demo, args: argparse.Namespace, *, allowed_paths: Optional[Sequence[str]] = None, block: bool = True,
           auth=None):
    """``demo.launch`` with the parsed ``--host/--port/--share`` and an upload size limit; ``auth``: gradio's
    login (``(name, password)`` pairs), off by default."""
    return demo.launch(server_name=args.host, server_port=args.port, share=bool(args.share),
                       allowed_paths=list(allowed_paths or []), prevent_thread_lock=not block,
                       max_file_size=MAX_FILE_SIZE, auth=auth)


def user_error(exc: BaseException):
    """A ``gr.Error`` carrying ``exc``'s message (image-loading, size and input errors are shown to the user)."""
    import gradio as gr

    return gr.Error(str(exc) or type(exc).__name__)


def serve(demo, *, port: int = 7860, auth=None):
    """Launch ``demo`` as a Space does: host, port and share from the environment (``GRADIO_SERVER_NAME``,
    ``GRADIO_SERVER_PORT``); blocks until the server stops. ``auth``: as for :func:`launch`."""
    return launch(demo, base_parser("A-FINE app", model=False, port=port).parse_args([]), auth=auth)


def image_input(label: str, **kwargs):
    """An image upload component that hands the handler the uploaded file's path without opening it.

    ``gr.Image`` opens every upload with Pillow before the handler runs (even with ``type="filepath"``), so a
    broken file would fail inside gradio with a generic message. This component's ``preprocess`` leaves
    decoding to :func:`load_upload`: the project's loader, its pixel limit checked from the header before
    decoding, and its error messages. (The instance's method is replaced rather than subclassing ``gr.Image``:
    gradio writes a ``.pyi`` file next to the module of every component subclass.)
    """
    import gradio as gr

    kwargs.setdefault("sources", ["upload", "clipboard"])
    component = gr.Image(type="filepath", image_mode=None, label=label, **kwargs)
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return gradio_preprocess(payload)
        return str(payload.path)

    component.preprocess = preprocess
    return component
