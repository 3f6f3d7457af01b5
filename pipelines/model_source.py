"""Where enhancer weights come from: a local folder or a Hub repository, checked before loading.

Turns the confusing failures of the loaders into one-line messages: a path that does not exist
("model folder not found"), instead of huggingface_hub's "Repo id must use alphanumeric chars";
a Hub id that is neither cached nor reachable, at once instead of after minutes of retries.

This file is also saved next to the pipeline code of a saved enhancer (``save_pretrained``), so it
imports nothing of this project.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["ModelSourceError", "check_model_source", "hub_offline", "looks_like_repo_id"]

# "name" or "org/name": letters, digits, "-", "_", "."; no leading/trailing "-"/"."; no "--" or "..".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?$")


class ModelSourceError(OSError):
    """The weights can be neither found locally nor fetched from the Hub (one-line message)."""


def looks_like_repo_id(source: str) -> bool:
    """True for strings shaped like a Hub repository id (``name`` or ``org/name``)."""
    return bool(_REPO_ID.match(source)) and "--" not in source and ".." not in source


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if hub_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(repo_id: str, filename: str, revision: str | None, cache_dir) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return False
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return isinstance(found, str) and os.path.isfile(found)


def check_model_source(
    source: str | os.PathLike,
    probe_file: str,
    *,
    what: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> dict:
    """Check that ``source`` can be loaded before any loader runs.

    Args:
        source: a local folder, or a Hub repository id.
        probe_file: a file every usable source holds (e.g. ``"unet/config.json"``), looked up in the
            Hub cache for repository ids.
        what: how to name the source in messages (``"model"``, ``"SD-1.5 model"``, ...).

    Returns:
        Extra keyword arguments for the loaders: ``{"local_files_only": True}`` when the Hub cannot
        be reached but the repository is cached (so that no loader waits for the network), else ``{}``.

    Raises:
        ModelSourceError: ``source`` is a path that does not exist or is not a folder, or a Hub id
            that is not cached while the Hub is offline / unreachable.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return {}
    if path.exists():
        raise ModelSourceError(f"{what} {text!r} is a file; expected a folder (or a Hub repository id)")
    if not looks_like_repo_id(text):
        raise ModelSourceError(f"{what} folder not found: {text}")
    if local_files_only or hub_offline():
        if _cached(text, probe_file, revision, cache_dir):
            return {}
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "local_files_only=True"
        raise ModelSourceError(
            f"{what} {text!r} is neither a local folder nor in the Hugging Face cache, and {why}: "
            "download it first (or pass a local folder)"
        )
    if _hub_reachable():
        return {}
    if _cached(text, probe_file, revision, cache_dir):
        return {"local_files_only": True}
    raise ModelSourceError(
        f"{what} {text!r} is neither a local folder nor in the Hugging Face cache, and the Hub cannot be "
        "reached (offline?): download it first (or pass a local folder)"
    )
