"""Which A-FINE weights to load: resolution of ``--model`` / ``model=`` without importing torch.

:func:`resolve_model_dir` turns what the user gave into something ``AfineModel.from_pretrained`` accepts
(a local directory, or a Hub repo id that is known to be reachable). It imports neither torch nor
transformers unless an official checkpoint has to be converted, so the command line can report a missing
model or an offline Hub in a fraction of a second. :mod:`modeling_afine.scoring` re-exports everything here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

#: Hub repository holding a copy of the official ``afine.pth`` (the PyIQA weights mirror).
DEFAULT_MODEL_ID = os.environ.get("AFINE_DEFAULT_REPO", "chaofengc/IQA-PyTorch-Weights")
DEFAULT_MODEL_FILENAME = os.environ.get("AFINE_DEFAULT_FILENAME", "afine.pth")

OFFLINE_HELP = (
    "To use a local copy instead: afine convert afine.pth  (writes ./afine) then pass --model ./afine "
    "(model='./afine' in Python); the README's 'Getting the weights' says where afine.pth is published."
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_FILENAME",
    "OFFLINE_HELP",
    "ModelNotAvailableError",
    "resolve_model_dir",
    "hub_offline",
]


class ModelNotAvailableError(RuntimeError):
    """The requested weights are neither local, cached, nor reachable."""


def _cache_root() -> Path:
    base = os.environ.get("AFINE_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "afine"
    )
    return Path(base)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds (DNS included)."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # create_connection's timeout does not bound the DNS lookup; a daemon thread bounds both.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _converted_dir_for(checkpoint: Path) -> Path:
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return _cache_root() / "converted" / f"{checkpoint.stem}-{key}"


def _is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _convert_cached(checkpoint: Path) -> Path:
    target = _converted_dir_for(checkpoint)
    if _is_converted(target):
        return target
    from .convert_afine_checkpoint import convert_afine_checkpoint  # imports torch: there is work to do

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        convert_afine_checkpoint(checkpoint, tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_cached_dir(folder: Path) -> Path:
    marker = folder / "clip_model.pth"
    if not marker.is_file():
        return _convert_cached(folder / "afine.pth")
    stat = marker.stat()
    key = hashlib.sha256(f"{folder.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = _cache_root() / "converted" / f"{folder.name}-stages-{key}"
    if not (target / "config.json").is_file():
        from .convert_afine_checkpoint import convert_afine_checkpoint

        convert_afine_checkpoint(folder, target)
    return target


def _download_default() -> Path:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(DEFAULT_MODEL_ID, DEFAULT_MODEL_FILENAME)
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached)
    if not _hub_reachable():
        raise ModelNotAvailableError(
            f"the default A-FINE weights ({DEFAULT_MODEL_ID}/{DEFAULT_MODEL_FILENAME}) are not cached and the "
            f"Hugging Face Hub cannot be reached (offline).\n{OFFLINE_HELP}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(DEFAULT_MODEL_ID, DEFAULT_MODEL_FILENAME))
    except Exception as exc:  # network errors come in many types
        raise ModelNotAvailableError(
            f"could not download {DEFAULT_MODEL_ID}/{DEFAULT_MODEL_FILENAME}: {exc}\n{OFFLINE_HELP}"
        ) from exc


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _resolve_repo_id(repo_id: str) -> str:
    """A repo id of converted weights: the local snapshot when cached (used offline), else the id if reachable."""
    from huggingface_hub import snapshot_download

    try:  # a complete earlier download works without the network
        local = snapshot_download(repo_id, local_files_only=True)
        if (Path(local) / "config.json").is_file():
            if hub_offline() or not _hub_reachable():
                return str(local)
    except Exception:  # not cached (LocalEntryNotFoundError), or an invalid id: decided below
        pass
    if not _hub_reachable():
        raise ModelNotAvailableError(
            f"{repo_id}: no such local folder, and as a Hub repo id it is not in the local cache while the Hugging "
            f"Face Hub cannot be reached (offline).\n{OFFLINE_HELP}"
        )
    return repo_id


def resolve_model_dir(model: Optional[str | os.PathLike] = None) -> str:
    """Resolve ``model`` to something ``AfineModel.from_pretrained`` accepts.

    * ``None``: the default Hub copy of the official ``afine.pth``, downloaded and converted once (cached under
      ``$HF_HOME/afine/converted``);
    * a directory with ``config.json``: used as is;
    * a ``.pth`` file or a folder of per-stage training files: converted once and cached;
    * ``ORG/NAME``: a Hub repo id of converted weights — its cached snapshot when offline, else the id.

    Raises :class:`ModelNotAvailableError` (within about a second when offline) with instructions when the
    weights cannot be found. Imports torch only when a checkpoint has to be converted.
    """
    if model is None:
        default = _download_default()
        target = _converted_dir_for(default)
        return str(target if _is_converted(target) else _convert_cached(default))
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if (path / "clip_model.pth").is_file() or (path / "afine.pth").is_file():
            return str(_convert_cached_dir(path))
        raise ModelNotAvailableError(f"{path}: directory has neither config.json nor official A-FINE checkpoint files")
    if path.is_file():
        return str(_convert_cached(path))
    if not _looks_like_repo_id(text):
        what = "file" if text.endswith((".pth", ".pt", ".bin", ".safetensors")) else "file or folder"
        raise ModelNotAvailableError(f"{text}: {what} does not exist (and it is not a Hub repo id ORG/NAME)")
    return _resolve_repo_id(text)
