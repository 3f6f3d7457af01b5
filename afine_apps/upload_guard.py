"""The demo's one security boundary for request inputs: every file that reaches a handler was uploaded to this app.

A gradio app receives file inputs as ``FileData`` dicts (``{"path": ..., "meta": {"_type": "gradio.FileData"}}``).
Gradio 6.31 checks only entries that carry ``meta`` (``processing_utils.async_move_files_to_cache`` traverses
with ``is_file_obj_with_meta``); a bare ``{"path": "/etc/shadow"}`` or a plain string reaches the component's
``preprocess`` untouched, and ``gr.Image(type="filepath")`` hands that path to the handler. So the demo does not
trust the components: :func:`guard_uploads` wraps the app's ``Blocks.preprocess_data``, the step every event of
every endpoint (``/score``, ``/compare``, ``/rank``, ``/naturalness``, the examples' hidden endpoint, any
added later) goes through, and checks each file input twice:

* **before gradio touches it** (the raw JSON of the request): each file entry must be a dict whose ``path`` is

  - a file this app received through its ``/upload`` route (gradio's ``Blocks.upload_file_set``: the upload
    cache, ``$GRADIO_TEMP_DIR/<sha256>/<upload name>``), compared after normalising ``..``;
  - one of the app's example images (the source files and the copies gradio made of them in its cache);
  - or an ``http(s)://`` URL in an entry with gradio's ``meta`` marker, which gradio itself downloads with
    its SSRF protection (no loopback or private addresses) into its cache;

  strings, ``file://`` URLs, ``data:`` URLs, paths outside the list (whether or not they exist), traversals
  such as ``<upload dir>/../../etc/passwd`` and entries of the wrong shape are refused;
* **after gradio's preprocessing** (what the handler will receive): each path must again be an upload, an
  example, or (for an input that held a vetted URL) a file gradio downloaded into its cache for that component.

Every refusal is one :class:`gradio.Error` with the same text (:data:`REFUSED`), whatever the path and whether or
not it exists: no file-system oracle, no server path, nothing of the file's content. The checks themselves touch
no file (they compare normalised path strings), so nothing outside the list is opened or served back (the
comparison slider only ever shows the request's own uploads).

Text inputs are checked at the same boundary: a ``gr.Textbox`` with ``max_length`` refuses longer text on the
server (gradio enforces ``max_length`` only in the browser), and checkboxes/numbers must carry a bool/number.

Limit (documented in ``docs/spaces.md``): gradio's ``/upload`` route does not record which session uploaded a file,
so "uploaded to this app" is the finest grain gradio 6.31 offers; an upload path holds the SHA-256 of the file's
content, so naming another user's upload requires having its bytes already.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

__all__ = ["REFUSED", "guard_uploads", "UploadGuard", "upload_name"]

#: The one message for any file input that is not this request's upload, an example or a vetted URL.
REFUSED = "This image was not uploaded to this app. Please upload the image file (or click an example) and try again."


def upload_name(path: str) -> str:
    """The name a user knows a file by: gradio stores uploads as ``<cache>/<sha256>/<upload name>``."""
    return os.path.basename(str(path)) or "upload"


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _is_http_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


class UploadGuard:
    """Wraps one ``gr.Blocks``' ``preprocess_data`` (see the module docstring); install with :func:`guard_uploads`."""

    def __init__(self, blocks, examples: Iterable[Any] = ()):
        import gradio as gr

        self.blocks = blocks
        self._file_types = (gr.Image, gr.File, gr.ImageSlider, gr.Gallery, gr.Video, gr.Audio, gr.Model3D,
                            gr.UploadButton, gr.ImageEditor)
        self._examples: set[str] = set()
        for example in examples:
            self._add_examples(example)

    # ----------------------------------------------------------------------------------------- allowlist

    def _add_examples(self, examples) -> None:
        """Allow the example files of a ``gr.Examples``: the files it was given and gradio's cached copies of them."""
        for sample in getattr(examples, "examples", None) or []:
            for value in sample if isinstance(sample, (list, tuple)) else [sample]:
                if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                    self._examples.add(_norm(os.fspath(value)))
        processed = getattr(examples, "non_none_processed_examples", None)  # (gradio keeps these out of delete_cache)
        for value in (processed.values() if hasattr(processed, "values") else []):
            for path in _file_paths(value):
                self._examples.add(_norm(path))

    def _uploaded(self, path: str) -> bool:
        from gradio.utils import get_upload_folder

        uploads = getattr(self.blocks, "upload_file_set", None) or set()
        target = _norm(path)
        if target in uploads:
            return True
        folder = get_upload_folder()
        if folder == _norm(folder):  # gradio records absolute, normalised upload paths: nothing else can match
            return False
        return any(_norm(p) == target for p in list(uploads))  # a relative $GRADIO_TEMP_DIR

    def allowed(self, path: Any) -> bool:
        """Whether ``path`` is an upload to this app or one of its examples (no file-system access)."""
        if not isinstance(path, str) or not path or "\0" in path or _is_http_url(path) or ":" in path.split("/")[0]:
            return False
        return _norm(path) in self._examples or self._uploaded(path)

    # ------------------------------------------------------------------------------------------- checks

    def is_file_input(self, block) -> bool:
        return isinstance(block, self._file_types)

    def check_raw(self, block, payload) -> bool:
        """Check one file input's raw request value; returns whether it holds a URL for gradio to download."""
        import gradio as gr

        has_url = False
        entries = payload if isinstance(payload, list) else [payload]
        if isinstance(payload, dict) and "path" not in payload and isinstance(block, gr.ImageSlider):
            entries = [payload.get(k) for k in sorted(payload)]  # an ImageSlider value: (image, image)
        elif isinstance(payload, list) and isinstance(block, gr.ImageSlider):
            entries = list(payload)
        for entry in entries:
            if entry is None:
                continue
            if not isinstance(entry, dict):
                raise gr.Error(REFUSED)  # a bare string path, a number, ...
            path, url = entry.get("path"), entry.get("url")
            if isinstance(url, str) and url.startswith("data:"):
                raise gr.Error(REFUSED)  # decoded by gradio into its cache, outside every check and limit
            if isinstance(path, str) and _is_http_url(path):
                meta = entry.get("meta")
                if not (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"):
                    raise gr.Error(REFUSED)  # gradio downloads (and vets) only entries it marked itself
                has_url = True
                continue
            if not self.allowed(path):
                raise gr.Error(REFUSED)
        return has_url

    def check_processed(self, block, value, downloaded: bool) -> None:
        """Check what a file input's ``preprocess`` hands the handler: paths of uploads/examples only."""
        import gradio as gr

        cache = _norm(getattr(self.blocks, "GRADIO_CACHE", "") or "")
        temp_files = {_norm(p) for p in getattr(block, "temp_files", set())} if downloaded else set()
        for path in _file_paths(value):
            if self.allowed(path):
                continue
            target = _norm(path)
            if downloaded and cache and target.startswith(cache + os.sep) and target in temp_files:
                continue  # a URL gradio itself downloaded (SSRF-checked) into its cache for this component
            raise gr.Error(REFUSED)

    def check_text(self, block, payload) -> None:
        import gradio as gr

        label = getattr(block, "label", None) or "text"
        if isinstance(block, gr.Textbox):
            if payload is not None and not isinstance(payload, str):
                raise gr.Error(f"{label}: expected text.")
            limit = getattr(block, "max_length", None)
            if limit is not None and payload is not None and len(payload) > limit:
                raise gr.Error(f"{label}: at most {limit} characters, got {len(payload):,}.")
        elif isinstance(block, gr.Checkbox):
            if payload is not None and not isinstance(payload, bool):
                raise gr.Error(f"{label}: expected true or false.")
        elif isinstance(block, gr.Number):
            if payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
                raise gr.Error(f"{label}: expected a number.")

    # ------------------------------------------------------------------------------------------ install

    def install(self) -> "UploadGuard":
        import gradio as gr

        original = self.blocks.preprocess_data
        guard = self

        async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
            downloads: dict[int, bool] = {}
            for i, block in enumerate(block_fn.inputs):
                payload = inputs[i] if i < len(inputs) else None
                if guard.is_file_input(block):
                    downloads[i] = guard.check_raw(block, payload)
                else:
                    guard.check_text(block, payload)
            try:
                processed = await original(block_fn, inputs, state, explicit_call)
            except gr.Error:
                raise
            except Exception as exc:
                if any(downloads.values()):  # gradio refused or failed to fetch a URL (e.g. a loopback address)
                    raise gr.Error(REFUSED) from exc
                raise
            if block_fn.preprocess:
                for i, downloaded in downloads.items():
                    if i < len(processed):
                        guard.check_processed(block_fn.inputs[i], processed[i], downloaded)
            return processed

        self.blocks.preprocess_data = preprocess_data
        self.blocks._afine_upload_guard = self
        return self


def _file_paths(value) -> list[str]:
    """Every file path in a preprocessed value or a FileData-like structure (str, dict with path, lists)."""
    found: list[str] = []

    def walk(v) -> None:
        if v is None:
            return
        if isinstance(v, (str, os.PathLike)):
            found.append(os.fspath(v))
        elif isinstance(v, dict):
            if "path" in v:
                if v["path"] is not None:
                    found.append(str(v["path"]))
            else:
                for item in v.values():
                    walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)
        elif hasattr(v, "path"):  # a FileData model
            walk(getattr(v, "path"))
        else:
            found.append(repr(v))  # something unexpected where a path belongs: refused by the caller
    walk(value)
    return found


def guard_uploads(blocks, examples: Iterable[Any] = (), guard: Optional[UploadGuard] = None) -> UploadGuard:
    """Install the upload boundary (see the module docstring) on ``blocks``; ``examples``: its ``gr.Examples``."""
    return (guard or UploadGuard(blocks, examples)).install()
