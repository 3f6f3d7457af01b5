"""The shared model loader and a high-level scorer.

``load_afine()`` is the one way the project resolves "which A-FINE weights": a converted model directory,
a Hub repo id of converted weights, an official ``afine.pth`` (converted on first use and cached), or the
default — the Hub copy of the official ``afine.pth`` (:data:`DEFAULT_MODEL_ID` / :data:`DEFAULT_MODEL_FILENAME`).

``AfineScorer`` scores any number of (distorted, reference) images of mixed sizes: it groups images by
size, batches them, and encodes a shared reference only once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from .image_io import ImageLoadError, format_size, probe_image
from .image_processing_afine import (
    AfineImageProcessor,
    ImageLike,
    check_score_budget,
    image_to_tensor,
    size_mismatch_message,
)
from .modeling_afine import AfineModel, AfineOutput, stretch_to_multiple, target_size

#: Hub repository holding a copy of the official ``afine.pth`` (the PyIQA weights mirror).
DEFAULT_MODEL_ID = os.environ.get("AFINE_DEFAULT_REPO", "chaofengc/IQA-PyTorch-Weights")
DEFAULT_MODEL_FILENAME = os.environ.get("AFINE_DEFAULT_FILENAME", "afine.pth")
# per-image problems that iter_scores reports instead of stopping
_INPUT_ERRORS = (ImageLoadError, ValueError, TypeError, OSError)

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_FILENAME",
    "ModelNotAvailableError",
    "resolve_model_dir",
    "load_afine",
    "AfineScorer",
    "resolve_device",
    "resolve_dtype",
]

OFFLINE_HELP = (
    "To use a local copy instead: afine convert afine.pth ./afine-model  then pass --model ./afine-model "
    "(model='./afine-model' in Python); the README's 'Getting the weights' says where afine.pth is published."
)


class ModelNotAvailableError(RuntimeError):
    """The requested weights are neither local, cached, nor reachable."""


def _cache_root() -> Path:
    base = os.environ.get("AFINE_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "afine"
    )
    return Path(base)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _converted_dir_for(checkpoint: Path) -> Path:
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return _cache_root() / "converted" / f"{checkpoint.stem}-{key}"


def _convert_cached(checkpoint: Path) -> Path:
    from .convert_afine_checkpoint import convert_afine_checkpoint

    target = _converted_dir_for(checkpoint)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
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


def _download_default() -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(DEFAULT_MODEL_ID, DEFAULT_MODEL_FILENAME)
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached)
    if not _hub_reachable():
        raise ModelNotAvailableError(
            f"the default A-FINE weights ({DEFAULT_MODEL_ID}/{DEFAULT_MODEL_FILENAME}) are not cached and the "
            f"Hugging Face Hub cannot be reached (offline).\n{OFFLINE_HELP}"
        )
    try:
        return Path(hf_hub_download(DEFAULT_MODEL_ID, DEFAULT_MODEL_FILENAME))
    except Exception as exc:  # network errors come in many types
        raise ModelNotAvailableError(
            f"could not download {DEFAULT_MODEL_ID}/{DEFAULT_MODEL_FILENAME}: {exc}\n{OFFLINE_HELP}"
        ) from exc


def resolve_model_dir(model: Optional[str | os.PathLike] = None) -> str:
    """Resolve ``model`` to something ``AfineModel.from_pretrained`` accepts.

    * ``None``: the default Hub copy of the official ``afine.pth``, downloaded and converted once (cached under
      ``$HF_HOME/afine/converted``);
    * a directory with ``config.json``: used as is;
    * a ``.pth`` file or a folder of per-stage training files: converted once and cached;
    * anything else: treated as a Hub repo id of converted weights.
    """
    if model is None:
        return str(_convert_cached(_download_default()))
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if (path / "clip_model.pth").is_file() or (path / "afine.pth").is_file():
            from .convert_afine_checkpoint import load_official_state_dict  # noqa: F401 (validates on convert)

            return str(_convert_cached_dir(path))
        raise ModelNotAvailableError(f"{path}: directory has neither config.json nor official A-FINE checkpoint files")
    if path.is_file():
        return str(_convert_cached(path))
    if str(model).endswith((".pth", ".pt", ".bin")) or os.sep in str(model) and not _looks_like_repo_id(str(model)):
        raise ModelNotAvailableError(f"{model}: file does not exist")
    return str(model)


def _convert_cached_dir(folder: Path) -> Path:
    marker = folder / "clip_model.pth"
    if not marker.is_file():
        return _convert_cached(folder / "afine.pth")
    from .convert_afine_checkpoint import convert_afine_checkpoint

    stat = marker.stat()
    key = hashlib.sha256(f"{folder.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = _cache_root() / "converted" / f"{folder.name}-stages-{key}"
    if not (target / "config.json").is_file():
        convert_afine_checkpoint(folder, target)
    return target


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available, else MPS, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: Optional[str | torch.dtype]) -> torch.dtype:
    """Backbone dtype from a name (``float32``, ``bfloat16``/``bf16``, ``float16``/``fp16``). Heads stay fp32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


def load_afine(
    model: Optional[str | os.PathLike] = None,
    *,
    device: Optional[str | torch.device] = None,
    dtype: Optional[str | torch.dtype] = None,
) -> tuple[AfineModel, AfineImageProcessor]:
    """Load ``(model, processor)`` in eval mode. See :func:`resolve_model_dir` for what ``model`` may be.

    ``dtype`` sets the CLIP backbone precision; the heads and calibrations always run in fp32.
    Raises :class:`ModelNotAvailableError` with instructions when weights cannot be found.
    """
    source = resolve_model_dir(model)
    torch_dtype = resolve_dtype(dtype)
    try:
        net = AfineModel.from_pretrained(source, dtype=torch_dtype)
    except OSError as exc:
        raise ModelNotAvailableError(f"could not load A-FINE weights from {source!r}: {exc}\n{OFFLINE_HELP}") from exc
    net = net.to(resolve_device(device)).eval()
    try:
        processor = AfineImageProcessor.from_pretrained(source)
    except OSError:
        processor = AfineImageProcessor(
            image_mean=net.config.image_mean, image_std=net.config.image_std, size_multiple=net.config.size_multiple
        )
    return net, processor


# --------------------------------------------------------------------------------------------------


def _image_size(image: ImageLike, name: str) -> tuple[int, int]:
    """(H, W) as it will be scored, from the file header only (no pixel decoding), via the project loader.

    Raises :class:`ImageLoadError` (naming the file) for anything the loader would refuse from its header, and
    for images over the scoring budget (``image_processing_afine.DEFAULT_MAX_SCORE_PIXELS``).
    """
    if isinstance(image, (str, os.PathLike)):
        height, width = probe_image(image)
    elif isinstance(image, Image.Image):
        height, width = image.size[1], image.size[0]
    elif isinstance(image, np.ndarray):
        height, width = int(image.shape[0]), int(image.shape[1])
    elif isinstance(image, torch.Tensor):
        height, width = int(image.shape[-2]), int(image.shape[-1])
    else:
        raise TypeError(f"{name}: unsupported image type {type(image).__name__}")
    check_score_budget(height, width, name)
    return height, width


def _name(image: ImageLike, index: int, what: str) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"{what}[{index}]"


class AfineScorer:
    """Score many images with one model: groups by size, batches, reuses a shared reference encoding.

    Example::

        scorer = AfineScorer()                      # default weights, best device
        out = scorer.score(["sr1.png", "sr2.png"], "hr.png")
        out.score                                   # tensor (2,), 0-100, lower is better
    """

    def __init__(
        self,
        model: Optional[str | os.PathLike | AfineModel] = None,
        *,
        processor: Optional[AfineImageProcessor] = None,
        device: Optional[str | torch.device] = None,
        dtype: Optional[str | torch.dtype] = None,
        batch_size: int = 8,
        autocast: bool = False,
        progress: bool = False,
    ) -> None:
        if isinstance(model, AfineModel):
            self.model = model.eval()
            if device is not None:
                self.model.to(resolve_device(device))
            self.processor = processor or AfineImageProcessor(
                image_mean=model.config.image_mean, image_std=model.config.image_std, size_multiple=model.config.size_multiple
            )
        else:
            self.model, loaded = load_afine(model, device=device, dtype=dtype)
            self.processor = processor or loaded
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.autocast = autocast
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _load(self, image: ImageLike, name: str) -> torch.Tensor:
        return self.processor.normalize_tensor(image_to_tensor(image, name))

    def _group_by_size(
        self, images: Sequence[ImageLike], what: str
    ) -> tuple[dict[tuple[int, int], list[int]], list[tuple[int, Exception]]]:
        """Input indices grouped by (H, W), read from file headers; plus the images whose header failed."""
        groups: dict[tuple[int, int], list[int]] = {}
        errors: list[tuple[int, Exception]] = []
        for i, image in enumerate(images):
            try:
                groups.setdefault(_image_size(image, _name(image, i, what)), []).append(i)
            except _INPUT_ERRORS as exc:
                errors.append((i, exc))
        return groups, errors

    def _inference(self):
        """inference_mode, plus bf16 autocast of an fp32 backbone on CUDA when ``autocast=True``."""
        backbone_dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        enabled = self.autocast and backbone_dtype == torch.float32 and self.device.type == "cuda"
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled))
        return stack

    def _run(self, **kwargs: Any) -> AfineOutput:
        with self._inference():
            return self.model(**kwargs)

    def _iter_batches(self, indices: list[int]) -> Iterator[list[int]]:
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]

    def score(
        self,
        distorted: ImageLike | Sequence[ImageLike],
        reference: ImageLike | Sequence[ImageLike],
        *,
        resize_reference: bool = False,
    ) -> AfineOutput:
        """Score distorted image(s) against one shared reference or one reference per image.

        Args:
            distorted: one image or a list (paths, PIL, numpy HWC, torch CHW); sizes may differ.
            reference: one image (shared by all) or a list as long as ``distorted``.
            resize_reference: stretch a reference whose size differs from its distorted image.

        Returns:
            :class:`AfineOutput` on CPU, fields of shape ``(N,)`` in input order, lower is better.

        Raises:
            ImageLoadError / ValueError: the first image that could not be scored (see :meth:`iter_scores`
            to score the others anyway).
        """
        results: dict[int, dict[str, torch.Tensor]] = {}
        for index, result in self.iter_scores(distorted, reference, resize_reference=resize_reference):
            if isinstance(result, Exception):
                raise result
            results[index] = result
        fields = AfineOutput.__dataclass_fields__
        return AfineOutput(**{f: torch.stack([results[i][f] for i in range(len(results))]) for f in fields})

    def iter_scores(
        self,
        distorted: ImageLike | Sequence[ImageLike],
        reference: ImageLike | Sequence[ImageLike],
        *,
        resize_reference: bool = False,
    ) -> Iterator[tuple[int, dict[str, torch.Tensor] | Exception]]:
        """Like :meth:`score`, but yields ``(index, fields)`` as each batch finishes, and ``(index, error)``
        for an image that cannot be scored (unreadable file, size mismatch) instead of stopping.

        A shared reference is loaded once and encoded once per distorted-image size. Results come in
        size-group order, not input order. An unreadable shared reference raises at once.
        """
        dis_list = list(distorted) if isinstance(distorted, (list, tuple)) else [distorted]
        shared = not isinstance(reference, (list, tuple))
        ref_list = [reference] if shared else list(reference)
        if not dis_list:
            raise ValueError("no distorted images given")
        if not shared and len(ref_list) != len(dis_list):
            raise ValueError(f"got {len(dis_list)} distorted images but {len(ref_list)} references")
        fields = AfineOutput.__dataclass_fields__
        bar = _progress(len(dis_list), self.progress)
        shared_ref = self._load(ref_list[0], _name(ref_list[0], 0, "reference")) if shared else None
        groups, errors = self._group_by_size(dis_list, "distorted")
        for i, exc in errors:
            bar.update(1)
            yield i, exc
        for group_size, indices in groups.items():
            size = target_size(*group_size, self.processor.size_multiple)
            encoding = None
            if shared:
                try:
                    encoding = self._encode_shared(shared_ref, group_size, size, ref_list[0], resize_reference)
                except _INPUT_ERRORS as exc:
                    for i in indices:
                        yield i, self._pair_error(exc, shared_ref, group_size, ref_list[0], dis_list[i], i, resize_reference)
                    bar.update(len(indices))
                    continue
            for batch in self._iter_batches(indices):
                ok, dis, refs = [], [], []
                for i in batch:
                    try:
                        d = self._load(dis_list[i], _name(dis_list[i], i, "distorted"))
                        if not shared:
                            r = self._load(ref_list[i], _name(ref_list[i], i, "reference"))
                            self._check_size(r, group_size, ref_list[i], i, resize_reference, distorted=dis_list[i])
                            refs.append(stretch_to_multiple(r[None], size=size)[0])
                    except _INPUT_ERRORS as exc:
                        yield i, exc
                        continue
                    ok.append(i)
                    dis.append(d)
                if ok:
                    x = stretch_to_multiple(torch.stack(dis), size=size).to(self.device)
                    if shared:
                        out = self._run(distorted=x, reference_encoding=encoding)
                    else:
                        out = self._run(distorted=x, reference=torch.stack(refs).to(self.device))
                    for j, i in enumerate(ok):
                        yield i, {f: getattr(out, f)[j].float().cpu() for f in fields}
                bar.update(len(batch))
        bar.close()

    def _check_size(
        self,
        ref: torch.Tensor,
        size: tuple[int, int],
        source: ImageLike,
        index: int,
        resize: bool,
        *,
        distorted: ImageLike | None = None,
        distorted_index: int | None = None,
    ) -> None:
        """Raise a ValueError naming both files if reference ``ref`` ([3, H, W]) is not ``size`` (H, W) and
        ``resize`` is off. ``distorted`` (and its index) name the distorted image of the pair when known."""
        ref_size = tuple(ref.shape[-2:])
        if ref_size == tuple(size) or resize:
            return
        fix = "use resize_reference=True / --resize-reference to stretch the reference"
        ref_name = _name(source, index, "reference")
        if distorted is None:
            raise ValueError(
                f"{ref_name}: size mismatch: the reference is {format_size(ref_size[1], ref_size[0])} but the "
                f"distorted image(s) scored against it are {format_size(size[1], size[0])}; A-FINE compares images "
                f"of the same size ({fix})"
            )
        dis_name = _name(distorted, index if distorted_index is None else distorted_index, "distorted")
        raise ValueError(size_mismatch_message(dis_name, size, ref_name, ref_size, fix))

    def _pair_error(self, exc: Exception, ref: torch.Tensor, size, source, distorted, index: int, resize: bool) -> Exception:
        """``exc`` for one distorted image of a shared-reference group: a size mismatch names both files."""
        try:
            self._check_size(ref, size, source, 0, resize, distorted=distorted, distorted_index=index)
        except ValueError as pair_exc:
            return pair_exc
        return exc

    def _encode_shared(self, ref: torch.Tensor, dis_size, size, source, resize_reference):
        self._check_size(ref, dis_size, source, 0, resize_reference)
        pixels = stretch_to_multiple(ref[None], size=size).to(self.device)
        with self._inference():
            enc = self.model.encode_reference(pixels)
        # The distorted batches are stretched to the target before the model sees them.
        enc.image_size = tuple(size)
        return enc

    def naturalness(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Calibrated no-reference naturalness N in (-2, 2) of each image, shape ``(N,)``; lower is better."""
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        out: dict[int, torch.Tensor] = {}
        groups, errors = self._group_by_size(image_list, "images")
        if errors:
            raise errors[0][1]
        for indices in groups.values():
            for batch in self._iter_batches(indices):
                x = torch.stack([self._load(image_list[i], _name(image_list[i], i, "images")) for i in batch])
                x = stretch_to_multiple(x, self.processor.size_multiple).to(self.device)
                with self._inference():
                    n = self.model.naturalness(x).naturalness.float().cpu()
                for j, i in enumerate(batch):
                    out[i] = n[j]
        return torch.stack([out[i] for i in range(len(image_list))])


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="A-FINE")
