"""Options, environment, model loading, upload limits and launching shared by the A-FINE Gradio apps.

Every Space in ``spaces/`` reads its settings from the environment (a Space has no command line), and the
``python -m afine_apps ...`` launchers map their options onto the same names:

==========================  ==========================================================================
``AFINE_MODEL``             converted model dir, Hub repo id or official ``afine.pth`` (default weights)
``AFINE_DEVICE``            ``cpu``, ``cuda``, ... (default: best available; ``cuda`` on ZeroGPU)
``AFINE_DTYPE``             backbone dtype ``float32`` (default), ``bfloat16``, ``float16``
``AFINE_BATCH_SIZE``        images per forward pass (default 8)
``AFINE_MAX_IMAGE_PIXELS`` uploads with more pixels (width x height) are refused from the header, before
                            decoding (default: sized to the hardware, :func:`hardware_pixel_budget`:
                            1,048,576 per CPU core, at most 8,388,608, so 2,097,152 on a free CPU
                            Space with 2 vCPUs; 16,777,216 = 4096 x 4096 on a GPU; the same variable
                            sets the library's own, higher default limit)
``AFINE_MAX_GALLERY_IMAGES`` candidates per gallery ranking (default 16), checked before decoding
``AFINE_CONCURRENCY``       how many model runs at once, across all endpoints of the demo (one shared
                            gradio concurrency id, :data:`MODEL_QUEUE`; default 1)
``AFINE_QUEUE_SIZE``        how many requests may wait (default 32; gradio 6.31 has no per-client share)
``AFINE_CACHE_TTL``         seconds an upload or result file stays in gradio's cache (``delete_cache``;
                            default 3600)
``GRADIO_SERVER_NAME``      host (default ``0.0.0.0`` inside a Space, ``127.0.0.1`` elsewhere)
``GRADIO_SERVER_PORT``      port (default 7860)
==========================  ==========================================================================
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = [
    "LOWER_IS_BETTER",
    "DEFAULT_MAX_PIXELS",
    "CPU_PIXELS_PER_CORE",
    "CPU_MAX_PIXELS",
    "MODEL_QUEUE",
    "max_pixels",
    "hardware_pixel_budget",
    "available_cpus",
    "max_gallery_images",
    "cache_ttl",
    "model_queue",
    "client_message",
    "probe_uploads",
    "markdown_text",
    "default_host",
    "base_parser",
    "scorer_from_env",
    "load_scorer",
    "load_upload",
    "queue",
    "launch",
    "user_error",
    "serve",
    "image_input",
    "files_input",
]

LOWER_IS_BETTER = (
    "**Every A-FINE number is lower-is-better.** `score` is 0–100 (0 best); `fidelity` and both "
    "`naturalness` values are calibrated to (-2, 2); `score_raw` = λ·N(distorted) + F is unbounded."
)

#: Upload limit of the apps on a GPU (pixels); the library's own limit is much higher.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Upload limit per CPU core on CPU hardware. Scaled from issue 18's measurement (4096 x 4096 = 16.8 Mpx took
#: 159 s on 2 cores, about 9.5 s per Mpx): a 2-core Space spends about 20 s on its largest accepted image.
CPU_PIXELS_PER_CORE = 1 << 20
#: Upload limit on CPU hardware whatever the core count (below 4096 x 4096: that upload took 159 s on 2 cores).
CPU_MAX_PIXELS = 8 << 20
#: Default number of candidates of one gallery ranking.
DEFAULT_MAX_GALLERY_IMAGES = 16
#: The gradio concurrency id shared by every event that runs the model (one model run at a time by default).
MODEL_QUEUE = "afine-model"
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


@functools.lru_cache(maxsize=1)
def available_cpus() -> int:
    """CPU cores this process may use: the affinity mask, lowered by a cgroup CPU quota (a Space's vCPUs).
    Read once per process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2: "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            limit, period = fh.read().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as fh:
                limit_us = int(fh.read())
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as fh:
                period_us = int(fh.read())
            if limit_us > 0 and period_us > 0:
                quota = limit_us / period_us
        except (OSError, ValueError):
            pass
    if quota is not None:
        cores = min(cores, max(1, int(quota + 0.999)))
    return max(1, cores)


def _uses_gpu(device=None) -> bool:
    from .zerogpu import on_zerogpu

    if device is not None:
        return str(device).split(":")[0] in ("cuda", "mps", "xpu")
    if on_zerogpu():
        return True
    import sys

    torch = sys.modules.get("torch")  # only if already imported: deciding a limit must not import torch
    try:
        return bool(torch is not None and torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA setup means CPU
        return False


def hardware_pixel_budget(device=None) -> int:
    """The default upload limit (pixels) for the hardware the model runs on.

    On a GPU (``device`` ``cuda``/``mps``, ZeroGPU, or CUDA available when ``device`` is None):
    :data:`DEFAULT_MAX_PIXELS` (4096 x 4096). On CPU: :data:`CPU_PIXELS_PER_CORE` per available core
    (:func:`available_cpus`), at most :data:`CPU_MAX_PIXELS`; a free CPU Space (2 vCPUs, 16 GB) gets
    2,097,152 pixels (1920 x 1080 fits; 4096 x 4096 is refused from its header).
    """
    if _uses_gpu(device):
        return DEFAULT_MAX_PIXELS
    return min(CPU_MAX_PIXELS, CPU_PIXELS_PER_CORE * available_cpus())


def max_pixels(device=None) -> int:
    """The apps' upload limit in pixels: ``$AFINE_MAX_IMAGE_PIXELS``, else :func:`hardware_pixel_budget`."""
    value = _env_int("AFINE_MAX_IMAGE_PIXELS", 0)
    return value if value > 0 else hardware_pixel_budget(device)


def max_gallery_images() -> int:
    """Most candidates of one gallery ranking: ``$AFINE_MAX_GALLERY_IMAGES`` (default 16)."""
    return max(1, _env_int("AFINE_MAX_GALLERY_IMAGES", DEFAULT_MAX_GALLERY_IMAGES))


def cache_ttl() -> int:
    """Seconds an upload or result file stays in gradio's cache: ``$AFINE_CACHE_TTL`` (default 3600)."""
    return max(60, _env_int("AFINE_CACHE_TTL", 3600))


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


def load_upload(path, what: str, *, limit: Optional[int] = None):
    """Decode one uploaded file with the project's one image loader, refusing it before decoding when it has
    more than ``limit`` (default :func:`max_pixels`) pixels.

    ``path``: a file path (what the demo's upload boundary, :mod:`afine_apps.upload_guard`, lets through) or a
    PIL image. Raises ``ValueError`` (nothing uploaded) or ``ImageLoadError`` whose message names the file by
    its upload name and holds no server path or setting name (:func:`client_message`).
    """
    from modeling_afine.image_io import ImageLoadError, load_image

    if path is None or (isinstance(path, str) and not path):
        raise ValueError(f"Please upload the {what} image.")
    source = getattr(path, "name", path) if not hasattr(path, "size") else path
    try:
        return load_image(source, max_pixels=limit if limit is not None else max_pixels())
    except ImageLoadError as exc:
        raise ImageLoadError(client_message(str(exc), source)) from None


def probe_uploads(uploads, limit: Optional[int] = None) -> None:
    """Check every ``(path, what)`` of one request against the pixel limit from its header, before any of them
    is decoded (a refused reference costs no decoding of the other images). PIL images and missing uploads
    are left to :func:`load_upload`. Raises ``ImageLoadError`` with a :func:`client_message`."""
    from modeling_afine.image_io import ImageLoadError, probe_image

    limit = limit if limit is not None else max_pixels()
    for path, _what in uploads:
        source = getattr(path, "name", path)
        if isinstance(source, (str, os.PathLike)) and os.fspath(source):
            try:
                probe_image(source, max_pixels=limit)
            except ImageLoadError as exc:
                raise ImageLoadError(client_message(str(exc), source)) from None


def markdown_text(text) -> str:
    """User text (a name) for a Markdown/HTML output: shown literally, never rendered (HTML and Markdown
    syntax escaped)."""
    import html
    import re

    escaped = re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", str(text))
    return html.escape(escaped, quote=True).replace("\n", " ").replace("\r", " ")


_SETTING_HINT = None


def client_message(message: str, path=None) -> str:
    """``message`` fit for a client: the file(s) ``path`` (one path or several) named by their upload names (not
    their server paths), without the loader's hints that name server settings (``set AFINE_... to ...``), HTML
    special characters escaped."""
    import html
    import re

    global _SETTING_HINT
    if _SETTING_HINT is None:
        _SETTING_HINT = re.compile(r"[:;,]?\s*\bset\s+[A-Z][A-Z0-9]*_[A-Z0-9_]+\b.*$", re.DOTALL)
    prefix, rest = "", message
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path or ())
    for full in (os.fspath(p) for p in paths if isinstance(p, (str, os.PathLike)) and os.fspath(p)):
        name = os.path.basename(full) or "upload"
        for form in (full, os.path.abspath(full)):
            if not prefix and rest.startswith(form):
                prefix, rest = name, rest[len(form):]
                break
        rest = rest.replace(os.path.abspath(full), name).replace(full, name)
    rest = _SETTING_HINT.sub("", rest)
    rest = re.sub(r"\bAFINE_[A-Z0-9_]+\b(?:=\S*)?", "a server setting", rest).rstrip(" ;,:")
    return html.escape(prefix + rest, quote=False)


def model_queue(demo, concurrency: Optional[int] = None):
    """Put every queued event of ``demo`` under one gradio concurrency id, :data:`MODEL_QUEUE`, limited to
    ``$AFINE_CONCURRENCY`` (else ``concurrency``, else 1) runs at once: one model run at a time across all
    endpoints, not per endpoint (gradio's ``default_concurrency_limit`` counts each event on its own)."""
    limit = max(1, _env_int("AFINE_CONCURRENCY", concurrency or 1))
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    for fn in fns:
        if getattr(fn, "queue", True):
            fn.concurrency_id = MODEL_QUEUE
            fn.concurrency_limit = limit
    return demo


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
        if payload is None or payload.path is None:
            return gradio_preprocess(payload)
        return str(payload.path)

    component.preprocess = preprocess
    return component


def files_input(label: str, **kwargs):
    """A multiple-file upload component that hands the handler the uploaded files' paths, in upload order.

    ``gr.File(type="filepath")``'s own ``preprocess`` (gradio 6.31) creates an empty, never deleted
    ``NamedTemporaryFile`` in gradio's cache for every file of every request (and leaves its descriptor open),
    so a long-running Space's cache would grow without bound; this one only reads the paths. Decoding and
    its checks stay with :func:`load_upload`. (The instance's method is replaced, as in :func:`image_input`.)
    """
    import gradio as gr

    kwargs.setdefault("file_types", ["image"])
    component = gr.File(file_count="multiple", type="filepath", label=label, **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        files = getattr(payload, "root", None)
        files = files if isinstance(files, list) else [payload]
        return [str(f.path) for f in files]

    component.preprocess = preprocess
    return component
