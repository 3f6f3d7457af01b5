"""The shared model loader and a high-level scorer.

``load_afine()`` is the one way the project resolves "which A-FINE weights": a converted model directory,
a Hub repo id of converted weights, an official ``afine.pth`` (converted on first use and cached), or the
default — the Hub copy of the official ``afine.pth`` (:data:`DEFAULT_MODEL_ID` / :data:`DEFAULT_MODEL_FILENAME`).
The resolution itself lives in :mod:`modeling_afine.model_source` (no torch needed) and is re-exported here.

``AfineScorer`` scores any number of (distorted, reference) images of mixed sizes: it groups images by
size, batches them, encodes a shared reference only once, and decodes the next batches in background
threads while the model runs (``num_workers``), which changes no number.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

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
from .devices import DeviceNotAvailableError, resolve_device, resolve_dtype
from .model_source import (  # noqa: F401  (re-exported for compatibility)
    DEFAULT_MODEL_FILENAME,
    DEFAULT_MODEL_ID,
    OFFLINE_HELP,
    ModelNotAvailableError,
    _cache_root,
    _convert_cached,
    _convert_cached_dir,
    _converted_dir_for,
    _download_default,
    _hub_reachable,
    _looks_like_repo_id,
    resolve_model_dir,
)
from .modeling_afine import AfineModel, AfineOutput, stretch_to_multiple, target_size

# per-image problems that iter_scores reports instead of stopping
_INPUT_ERRORS = (ImageLoadError, ValueError, TypeError, OSError)
# decoded float32 pixels (RGB) that background loading may hold ahead of the model, beyond one batch
_PREFETCH_PIXELS = 2**23

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_FILENAME",
    "ModelNotAvailableError",
    "DeviceNotAvailableError",
    "resolve_model_dir",
    "load_afine",
    "AfineScorer",
    "resolve_device",
    "resolve_dtype",
]


def load_afine(
    model: Optional[str | os.PathLike] = None,
    *,
    device: Optional[str | torch.device] = None,
    dtype: Optional[str | torch.dtype] = None,
) -> tuple[AfineModel, AfineImageProcessor]:
    """Load ``(model, processor)`` in eval mode. See :func:`resolve_model_dir` for what ``model`` may be.

    ``dtype`` sets the CLIP backbone precision; the heads and calibrations always run in fp32.
    Raises :class:`ModelNotAvailableError` with instructions when weights cannot be found, and
    :class:`DeviceNotAvailableError` (before loading anything) when ``device`` does not exist here.
    """
    target_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    source = resolve_model_dir(model)
    try:
        net = AfineModel.from_pretrained(source, dtype=torch_dtype)
    except OSError as exc:
        raise ModelNotAvailableError(f"could not load A-FINE weights from {source!r}: {exc}\n{OFFLINE_HELP}") from exc
    net = net.to(target_device).eval()
    try:
        processor = AfineImageProcessor.from_pretrained(source)
    except OSError:
        processor = AfineImageProcessor.for_config(net.config)
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


def _default_workers(device: Optional[torch.device] = None) -> int:
    """Decoding threads: on CPU they share the cores with the model (half of them, at most 4); with an
    accelerator the cores have nothing else to do (up to 8)."""
    cpus = os.cpu_count() or 2
    if device is not None and device.type != "cpu":
        return max(1, min(8, cpus))
    return max(1, min(4, cpus // 2))


@dataclass
class _Step:
    """One forward pass: distorted ``items`` of one size, against one shared reference or their own."""

    items: list[int]
    size: tuple[int, int]  # (H, W) of the distorted images
    target: tuple[int, int]  # stretched size the model sees
    ref: Optional[int] = None  # shared reference (index into the reference list); None: one reference per item
    load_ref: bool = False  # this step is the first of its shared reference and decodes it

    @property
    def pixels(self) -> int:
        per_item = 1 if self.ref is not None else 2
        return len(self.items) * per_item * self.size[0] * self.size[1] + (self.size[0] * self.size[1] if self.load_ref else 0)


@dataclass
class _Loaded:
    ok: list[int] = field(default_factory=list)
    dis: list[torch.Tensor] = field(default_factory=list)
    refs: list[torch.Tensor] = field(default_factory=list)
    errors: list[tuple[int, Exception]] = field(default_factory=list)
    ref: Any = None  # the decoded shared reference, or the error that prevented it


def _capture(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the per-image error it raised (returned, so a background thread can hand it back)."""
    try:
        return fn(*args)
    except _INPUT_ERRORS as exc:
        return exc
    except MemoryError as exc:  # decoding an image did not fit (named by _load): its pair fails, the run goes on
        return exc


# torch.OutOfMemoryError (torch >= 2.5) is what torch.cuda.OutOfMemoryError aliases today
_OOM_TYPES = (MemoryError, getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", MemoryError)))
_MEMORY_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "out of memory", "CUDA error: out of memory")


def is_memory_error(exc: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error or a failed CPU allocation (``MemoryError``, or the
    ``RuntimeError`` of torch's CPU allocator); these are retried with a smaller batch, not raised."""
    if isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _MEMORY_MESSAGES)


def _memory_error(name: str, what: str, device: torch.device, exc: BaseException) -> MemoryError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return MemoryError(
        f"{name}: out of memory {what} on {device} ({first}); free memory, use --dtype bfloat16, or score it on a "
        "bigger device"
    )


def _release_memory(device: torch.device) -> None:
    import gc

    gc.collect(1)  # what the failed batch left in reference cycles is young; a full collection costs ~0.5 s
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Prefetch:
    """Decodes the images of upcoming steps in background threads, one task per image; yields in step order.

    Steps are queued ahead while their decoded pixels stay under ``_PREFETCH_PIXELS`` (always at least the next
    step), so every thread has work even when a single batch is large. ``tasks(step)`` lists the step's
    callables; ``assemble(step, results)`` turns their results (values or captured errors) into a
    :class:`_Loaded`. With ``workers == 0`` everything runs in the calling thread.
    """

    def __init__(
        self,
        steps: list[_Step],
        tasks: Callable[[_Step], list[Callable[[], Any]]],
        assemble: Callable[[_Step, list[Any]], _Loaded],
        workers: int,
    ) -> None:
        self.steps, self.tasks, self.assemble, self.workers = steps, tasks, assemble, workers

    def __iter__(self) -> Iterator[tuple[_Step, _Loaded]]:
        if self.workers <= 0:
            for step in self.steps:
                yield step, self.assemble(step, [_capture(task) for task in self.tasks(step)])
            return
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="afine-load")
        pending: list[tuple[_Step, list[Future]]] = []
        try:
            nxt = 0
            while nxt < len(self.steps) or pending:
                in_flight = sum(step.pixels for step, _ in pending)
                while nxt < len(self.steps) and (
                    not pending
                    or (len(pending) <= 2 * self.workers and in_flight + self.steps[nxt].pixels <= _PREFETCH_PIXELS)
                ):
                    step = self.steps[nxt]
                    pending.append((step, [pool.submit(_capture, task) for task in self.tasks(step)]))
                    in_flight += step.pixels
                    nxt += 1
                step, futures = pending.pop(0)
                loaded = self.assemble(step, [f.result() for f in futures])
                del futures  # the futures hold the decoded images too: only ``loaded`` may, so the caller can drop them
                yield step, loaded
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


class AfineScorer:
    """Score many images with one model: groups by size, batches, reuses a shared reference encoding.

    Example::

        scorer = AfineScorer()                      # default weights, best device
        out = scorer.score(["sr1.png", "sr2.png"], "hr.png")
        out.score                                   # tensor (2,), 0-100, lower is better

    ``num_workers`` background threads decode and normalise the next batches while the model runs
    (``None``: on CPU half the cores, at most 4; with an accelerator up to 8; ``0``: everything in the calling
    thread). The numbers do not depend on it.
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
        num_workers: Optional[int] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(model, AfineModel):
            self.model = model.eval()
            if device is not None:
                self.model.to(resolve_device(device))
            self.processor = processor or AfineImageProcessor.for_config(model.config)
        else:
            self.model, loaded = load_afine(model, device=device, dtype=dtype)
            self.processor = processor or loaded
        self.batch_size = int(batch_size)
        self.autocast = autocast
        self.progress = progress
        self.num_workers = _default_workers(self.device) if num_workers is None else int(num_workers)
        # largest batch that fit after a memory fault, per stretched image size (see _forward_batch)
        self._memory_caps: dict[tuple[int, int], int] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _load(self, image: ImageLike, name: str) -> torch.Tensor:
        try:
            return self.processor.normalize_tensor(image_to_tensor(image, name))
        except MemoryError:
            raise MemoryError(f"{name}: out of memory decoding this image") from None

    def _group_by_size(
        self, images: Sequence[ImageLike], what: str, indices: Optional[Sequence[int]] = None
    ) -> tuple[dict[tuple[int, int], list[int]], list[tuple[int, Exception]]]:
        """Input indices grouped by (H, W), read from file headers; plus the images whose header failed."""
        groups: dict[tuple[int, int], list[int]] = {}
        errors: list[tuple[int, Exception]] = []
        for i in range(len(images)) if indices is None else indices:
            image = images[i]
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
        preloaded = {0: self._load(ref_list[0], _name(ref_list[0], 0, "reference"))} if shared else {}
        groups, errors = self._group_by_size(dis_list, "distorted")
        steps = self._plan(groups, 0 if shared else None)
        own_refs = None if shared else ref_list
        yield from self._execute(dis_list, ref_list, own_refs, errors, steps, resize_reference, preloaded)

    def iter_pairs(
        self,
        pairs: Sequence[tuple[ImageLike, ImageLike]],
        *,
        resize_reference: bool = False,
        shared_references: Optional[set[str]] = None,
    ) -> Iterator[tuple[int, dict[str, torch.Tensor] | Exception]]:
        """Score ``(distorted, reference)`` pairs, sharing work between pairs that name the same reference.

        A reference that appears in several pairs is decoded once and encoded once per distorted-image size
        (as :meth:`iter_scores` does for one shared reference); pairs whose reference appears once are batched
        together (one backbone pass over both images). References are matched by path (``os.fspath``) or, for
        in-memory images, by identity. ``shared_references``: paths to treat as shared even when they appear
        once here, e.g. because other shards of the same job score their other pairs; this keeps every pair's
        computation independent of how the job was split. Yields ``(index, fields)`` / ``(index, error)`` like
        :meth:`iter_scores`: nothing raises for a bad file, including an unreadable reference (each of its
        pairs gets the error). Results come in work order.
        """
        pairs = list(pairs)
        dis_list = [d for d, _ in pairs]
        by_ref: dict[Any, list[int]] = {}
        for i, (_, ref) in enumerate(pairs):
            key = os.fspath(ref) if isinstance(ref, (str, os.PathLike)) else ("id", id(ref))
            by_ref.setdefault(key, []).append(i)
        ref_list: list[ImageLike] = []  # the references shared by several pairs
        steps: list[_Step] = []
        errors: list[tuple[int, Exception]] = []
        singles: list[int] = []
        for key, indices in by_ref.items():
            if len(indices) == 1 and key not in (shared_references or ()):
                singles.append(indices[0])
                continue
            r = len(ref_list)
            ref_list.append(pairs[indices[0]][1])
            groups, errs = self._group_by_size(dis_list, "distorted", indices)
            errors += errs
            steps += self._plan(groups, r)
        # pairs with a reference of their own: one reference per item, batched by distorted size
        groups, errs = self._group_by_size(dis_list, "distorted", singles)
        errors += errs
        steps += self._plan(groups, None)
        own_refs = [pair[1] for pair in pairs]
        yield from self._execute(dis_list, ref_list, own_refs, errors, steps, resize_reference, {})

    def _plan(self, groups: dict[tuple[int, int], list[int]], ref: Optional[int]) -> list[_Step]:
        steps = []
        for group_size, indices in groups.items():
            target = target_size(*group_size, self.processor.size_multiple)
            for batch in self._iter_batches(indices):
                steps.append(_Step(batch, group_size, target, ref, load_ref=ref is not None and not steps))
        return steps

    def _step_tasks(
        self,
        step: _Step,
        dis_list: Sequence[ImageLike],
        own_refs: Optional[Sequence[ImageLike]],
        shared_refs: Sequence[ImageLike],
        resize_reference: bool,
        preloaded: dict[int, torch.Tensor],
    ) -> list[Callable[[], Any]]:
        """One callable per image of ``step`` (run in background threads): the shared reference first when this
        step is the first of its reference, then each item's distorted image (and its own reference)."""
        tasks: list[Callable[[], Any]] = []
        if step.load_ref and step.ref not in preloaded:
            source = shared_refs[step.ref]
            tasks.append(lambda: self._load(source, _name(source, step.ref, "reference")))

        def item(i: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            d = self._load(dis_list[i], _name(dis_list[i], i, "distorted"))
            if step.ref is not None:
                return d, None
            r = self._load(own_refs[i], _name(own_refs[i], i, "reference"))
            self._check_size(r, step.size, own_refs[i], i, resize_reference, distorted=dis_list[i])
            if tuple(r.shape[-2:]) == tuple(d.shape[-2:]):
                return d, r  # stretched with its distorted image when the batch runs (see _batch_inputs)
            return d, stretch_to_multiple(r[None], size=step.target)[0]

        tasks += [lambda i=i: item(i) for i in step.items]
        return tasks

    @staticmethod
    def _assemble(step: _Step, results: list[Any], preloaded: dict[int, torch.Tensor]) -> _Loaded:
        out = _Loaded()
        if step.load_ref and step.ref not in preloaded:
            out.ref, results = results[0], results[1:]
        for i, result in zip(step.items, results):
            if isinstance(result, Exception):
                out.errors.append((i, result))
                continue
            out.ok.append(i)
            out.dis.append(result[0])
            if result[1] is not None:
                out.refs.append(result[1])
        return out

    def _execute(
        self,
        dis_list: Sequence[ImageLike],
        shared_refs: Sequence[ImageLike],
        own_refs: Optional[Sequence[ImageLike]],
        header_errors: list[tuple[int, Exception]],
        steps: list[_Step],
        resize_reference: bool,
        preloaded: dict[int, torch.Tensor],
    ) -> Iterator[tuple[int, dict[str, torch.Tensor] | Exception]]:
        """Run ``steps`` (against ``shared_refs[step.ref]``, or ``own_refs[i]`` per item), loading ahead in threads."""
        bar = _progress(len(dis_list), self.progress)
        for i, exc in header_errors:
            bar.update(1)
            yield i, exc

        def tasks(step: _Step) -> list[Callable[[], Any]]:
            return self._step_tasks(step, dis_list, own_refs, shared_refs, resize_reference, preloaded)

        def assemble(step: _Step, results: list[Any]) -> _Loaded:
            return self._assemble(step, results, preloaded)

        images_per_encoding = Counter()  # distorted images per (shared reference, size)
        for s in steps:
            if s.ref is not None:
                images_per_encoding[(s.ref, s.size)] += len(s.items)
        ref_tensor: Any = None
        current_ref: Optional[int] = None
        encoding: Any = None
        encoding_key: Any = None
        # One step and one decoding thread: nothing to overlap, and a worker thread's torch ops (to tensor,
        # normalise) leave an OpenMP team spinning beside the model's (bf16 10 x 512^2 on 2 cores: +10 %).
        workers = 0 if len(steps) <= 1 and self.num_workers <= 1 else self.num_workers
        for step, loaded in _Prefetch(steps, tasks, assemble, workers):
            if step.ref is not None:
                if step.ref != current_ref:  # steps of one reference are contiguous: keep only the current one
                    current_ref, encoding_key, encoding = step.ref, None, None
                    ref_tensor = preloaded.get(step.ref, loaded.ref)
                if (step.ref, step.size) != encoding_key:
                    encoding_key = (step.ref, step.size)
                    if isinstance(ref_tensor, Exception):
                        encoding = ref_tensor
                    else:
                        source = shared_refs[step.ref]
                        try:
                            encoding = self._encode_shared(
                                ref_tensor, step.size, step.target, source, resize_reference,
                                images=images_per_encoding[(step.ref, step.size)],
                            )
                        except _INPUT_ERRORS as exc:
                            encoding = exc
                        except Exception as exc:  # a memory fault: each of the reference's pairs gets the error
                            if not is_memory_error(exc):
                                raise
                            encoding = _memory_error(_name(source, step.ref, "reference"), "encoding this reference", self.device, exc)
                        if isinstance(encoding, MemoryError):
                            _release_memory(self.device)
                if isinstance(encoding, Exception):
                    source = shared_refs[step.ref]
                    for i in step.items:
                        if isinstance(ref_tensor, Exception):
                            yield i, encoding
                        else:  # a size mismatch names both files of the pair
                            yield i, self._pair_error(encoding, ref_tensor, step.size, source, dis_list[i], i, resize_reference)
                    bar.update(len(step.items))
                    continue
            for i, exc in loaded.errors:
                yield i, exc
            if loaded.ok:
                refs = loaded.refs if step.ref is None else None
                yield from self._forward_batch(step, loaded.ok, loaded.dis, refs, encoding, dis_list)
            bar.update(len(step.items))
        bar.close()

    def _forward_batch(
        self,
        step: _Step,
        items: list[int],
        dis: list[torch.Tensor],
        refs: Optional[list[torch.Tensor]],
        encoding: Any,
        dis_list: Sequence[ImageLike],
    ) -> Iterator[tuple[int, dict[str, torch.Tensor] | Exception]]:
        """One forward pass over ``items`` (against ``refs``, one per item, or the shared ``encoding``).

        A memory fault (CUDA out of memory, a failed CPU allocation) halves the batch and retries, down to one
        pair; a pair that does not fit alone comes back as a :class:`MemoryError` naming its file. The halved size
        is remembered for later batches of the same image size, so one fault is not paid for on every batch.
        """
        cap = self._memory_caps.get(step.target)
        if cap is not None and len(items) > cap:
            for start in range(0, len(items), cap):
                part = slice(start, start + cap)
                yield from self._forward_batch(step, items[part], dis[part], refs[part] if refs is not None else None, encoding, dis_list)
            return
        fields = AfineOutput.__dataclass_fields__
        fault: Optional[BaseException] = None
        results: list[tuple[int, dict[str, torch.Tensor]]] = []
        try:
            # a batch that cannot be split again hands its decoded images over (a 4K image is 100 MB)
            x, reference = self._batch_inputs(step, dis, refs, encoding if refs is None else None, keep=len(items) > 1)
            if reference is None:
                out = self._run(distorted=x, reference_encoding=encoding)
            else:
                out = self._run(distorted=x, reference=reference)
            del x, reference
            results = [(i, {f: getattr(out, f)[j].float().cpu() for f in fields}) for j, i in enumerate(items)]
            del out
        except Exception as exc:
            if not is_memory_error(exc):
                raise
            fault = _memory_error(_name(dis_list[items[0]], items[0], "distorted"), "scoring this pair alone", self.device, exc)
        if fault is None:  # (the retry runs outside the except block, whose traceback pins the batch's tensors)
            yield from results
            return
        _release_memory(self.device)
        if len(items) == 1:
            self._memory_caps[step.target] = 1
            yield items[0], fault
            return
        half = (len(items) + 1) // 2
        self._memory_caps[step.target] = min(half, self._memory_caps.get(step.target, half))
        for part in (slice(0, half), slice(half, None)):
            yield from self._forward_batch(step, items[part], dis[part], refs[part] if refs is not None else None, encoding, dis_list)

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

    def _batch_inputs(
        self,
        step: _Step,
        dis: list[torch.Tensor],
        refs: Optional[list[torch.Tensor]],
        shared: Any,
        keep: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The batch's distorted images and references for the forward, on the device. Unless ``keep`` (a batch
        that may still be split after a memory fault), the decoded copies in ``dis``/``refs`` are dropped (a 4K
        image is 100 MB). ``refs`` holds one reference per item, or is None with ``shared`` the shared reference
        (pixels ``[1, 3, H, W]`` or an encoding). The reference returned is ``None`` for a shared encoding.

        When the references have the distorted images' size, both go to the model as decoded: it stretches them
        itself, each stretched copy alive only while its pass needs it (the same op, so the same numbers).
        """
        x = torch.stack(dis)
        if not keep:
            dis.clear()
        reference = shared if isinstance(shared, torch.Tensor) else None
        if refs is not None:
            own = refs
            if any(tuple(r.shape[-2:]) != tuple(x.shape[-2:]) for r in own):
                own = [stretch_to_multiple(r[None], size=step.target)[0] for r in own]  # no-op for resized ones
            reference = torch.stack(own)
            if not keep:
                refs.clear()
            del own
        native = self.processor.size_multiple == self.model.config.size_multiple  # the model stretches as we would
        if reference is None or reference.shape[-2:] != x.shape[-2:] or not native:
            x = stretch_to_multiple(x, size=step.target)
            if reference is not None:
                reference = stretch_to_multiple(reference, size=step.target)
        return x.to(self.device), None if reference is None else reference.to(self.device)

    def _reference_in_lockstep(self, images: int, size: tuple[int, int]) -> bool:
        """Whether a shared reference goes through the forward with each batch (True) or is encoded once (False).

        An encoding keeps the reference's 12 block outputs (300 MB for a 4K image) so that its backbone pass is not
        repeated for every batch. A reference whose distorted images fit in one batch gains nothing from it (its
        pass runs once either way; the forward is then exactly the model's own path), and big images
        (``AfineModel.is_big_image``) are limited by memory, not by one extra reference pass per batch: both go
        through the forward with the reference, which runs the two in lockstep. Same numbers either way.
        """
        return images <= max(1, self.batch_size) or self.model.is_big_image(size)

    def _encode_shared(self, ref: torch.Tensor, dis_size, size, source, resize_reference, images: int = 2):
        """The shared reference for ``images`` distorted images of ``dis_size``: its encoding, or its pixels
        ``[1, 3, H, W]`` to pass as ``reference`` (see :meth:`_reference_in_lockstep`): as decoded when it has the
        distorted images' size (the model stretches it, as it does them), else stretched to ``size``."""
        self._check_size(ref, dis_size, source, 0, resize_reference)
        if self._reference_in_lockstep(images, size):
            same = tuple(ref.shape[-2:]) == tuple(dis_size) and self.processor.size_multiple == self.model.config.size_multiple
            return (ref[None] if same else stretch_to_multiple(ref[None], size=size)).to(self.device)
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
