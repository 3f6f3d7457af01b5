"""A-FINE as a Hugging Face ``evaluate`` metric (full-reference image quality, lower is better).

This file is the metric module of the ``afine`` metric Space (``spaces/afine/`` in the afine-hf repository).
It needs the ``afine-hf`` package (``modeling_afine``) installed; the model and the image decoding are the
package's, so numbers and errors are those of ``AfineScorer`` and the ``afine`` command::

    import evaluate
    metric = evaluate.load("afine")          # from spaces/, or anywhere after `python -m afine_apps install-metric`
    metric.compute(predictions=["sr.png"], references=["hr.png"])

``predictions`` are the images under test (distorted / enhanced), ``references`` the reference images, in
that order: A-FINE is asymmetric. See ``README.md`` next to this file for the full card.
"""

import io
import os
import sys

import datasets
import evaluate
import numpy
import PIL.Image

_CITATION = """\
@inproceedings{chen2025afine,
  title     = {Toward Generalized Image Quality Assessment: Relaxing the Perfect Reference Quality Assumption},
  author    = {Chen, Du and Wu, Tianhe and Ma, Kede and Zhang, Lei},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}
"""

_DESCRIPTION = """\
A-FINE (Adaptive FIdelity-Naturalness Evaluator) scores an image under test against a reference whose own
quality may be imperfect. It combines a fidelity term (how far the test image is from the reference) with
the naturalness of the test image, weighted adaptively by how natural the reference itself is.
Every output is LOWER IS BETTER. The metric is asymmetric: predictions = images under test,
references = reference images.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: images under test (distorted / enhanced), what ``AfineScorer`` accepts: file paths, PIL
        images, numpy arrays (H, W) or (H, W, C) of uint8, uint16 or float in [0, 1], torch tensors (C, H, W)
        or (H, W) of uint8 or float in [0, 1] (a 4-D array or tensor is a batch), or encoded image bytes.
    references: the reference image of each prediction (same kinds), same count as predictions.
    model: converted model directory, Hub repo id, or official ``afine.pth``; default: the package default
        weights (``modeling_afine.load_afine()``). Also accepted by ``evaluate.load(..., model=...)``.
    device: "cpu", "cuda", ... (default: best available).
    dtype: backbone dtype ("float32", "bfloat16", "float16"); default float32.
    batch_size: images per forward pass (default 8).
    resize_reference: stretch a reference whose size differs from its prediction (default False: error).
    max_pixels: refuse images with more pixels than this, from their header, before decoding (default: the
        package's limit, ``modeling_afine.image_io.DEFAULT_MAX_PIXELS``).
Returns:
    score: per-image A-FINE score in [0, 100], lower is better (0 best, 100 worst).
    score_raw: per-image combined raw score A, unbounded (about -1e9 to 4), lower is better.
    fidelity: per-image calibrated fidelity F in (-2, 2), lower is better.
    naturalness_distorted: per-image calibrated naturalness N of the prediction in (-2, 2), lower is better.
    naturalness_reference: per-image calibrated naturalness N of the reference in (-2, 2), lower is better.
    mean_score, mean_score_raw, mean_fidelity, mean_naturalness_distorted, mean_naturalness_reference:
        the means of the lists above (floats).
    Unreadable or oversized images raise ``modeling_afine.ImageLoadError`` naming the file, as the CLI does.
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("afine")
    >>> out = metric.compute(predictions=["sr.png"], references=["hr.png"])
    >>> out["score"], out["mean_score"]
"""

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")

#: What an image input may be (the inputs ``AfineScorer`` accepts), for one-line refusals.
EXPECTED = ("a file path, raw encoded bytes, a PIL image, a numpy array (H, W) or (H, W, C) of uint8, uint16 or "
            "float in [0, 1], or a torch tensor (C, H, W) or (H, W) of uint8 or float in [0, 1]")
_NPY = b"\x93NUMPY"  # numpy's .npy magic: an in-memory array, stored losslessly
_TORCH = b"AFINE-TORCH-CHW\n"  # prefix of a stored torch tensor (channels first), followed by its .npy bytes


def _npy(array):
    buf = io.BytesIO()
    numpy.save(buf, numpy.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _describe(value):
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}" + (f" of shape {tuple(shape)} and dtype {value.dtype}" if shape is not None else "")


def _encode(value, name):
    """One input image -> the stored ``datasets.Image(decode=False)`` value ``{"path", "bytes"}``, losslessly:
    files by path, encoded bytes as they are, PIL images as their RGB pixels (the scorer's conversion), numpy
    arrays and torch tensors as ``.npy`` bytes (a tensor with a prefix, so that it comes back channels-first).
    Raises a one-line ``ValueError`` naming ``name`` and what is expected."""
    if isinstance(value, dict) and set(value) <= {"path", "bytes"}:
        return value  # already in datasets.Image's storage form
    if isinstance(value, (str, os.PathLike)):
        return {"path": os.fspath(value), "bytes": None}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"path": None, "bytes": bytes(value)}
    if isinstance(value, PIL.Image.Image):
        from modeling_afine.image_io import ImageLoadError, to_rgb8

        try:
            rgb = to_rgb8(value, name)
        except (OSError, SyntaxError, EOFError) as exc:  # a lazily opened PIL image whose data is bad
            raise ImageLoadError(f"{name}: cannot decode image: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        return {"path": None, "bytes": _npy(numpy.asarray(rgb))}
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.ndim not in (2, 3) or not (t.dtype == torch.uint8 or t.is_floating_point()):
            raise ValueError(f"{name}: got a torch tensor of shape {tuple(t.shape)} and dtype {t.dtype}; expected "
                             "(C, H, W) or (H, W) of uint8 or float in [0, 1]")
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # numpy has no bfloat16; the scorer computes in float32 anyway
        return {"path": None, "bytes": _TORCH + _npy(t.numpy())}
    if isinstance(value, numpy.ndarray):
        kind = value.dtype
        if value.ndim not in (2, 3) or not (kind in (numpy.uint8, numpy.uint16) or numpy.issubdtype(kind, numpy.floating)):
            raise ValueError(f"{name}: got a numpy array of shape {value.shape} and dtype {kind}; expected (H, W) or "
                             "(H, W, C) of uint8, uint16 or float in [0, 1]")
        return {"path": None, "bytes": _npy(value)}
    raise ValueError(f"{name}: got {_describe(value)}; expected {EXPECTED}")


def _encode_column(values, column):
    """A column of inputs as a list of stored values (a 4-D array or tensor is a batch of images)."""
    if values is None:
        return None
    if getattr(values, "ndim", None) == 4:
        values = list(values)
    elif hasattr(values, "ndim") or isinstance(values, (str, os.PathLike, bytes, PIL.Image.Image)):
        raise ValueError(f"{column}: got one {_describe(values)}; expected a list of images (or a 4-D batch), each "
                         f"{EXPECTED}")
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{column}: got {_describe(values)}; expected a list of images, each {EXPECTED}") from None
    return [_encode(v, f"{column}[{i}]") for i, v in enumerate(values)]


def _decode(value, column, index, max_pixels=None):
    """One stored ``datasets.Image(decode=False)`` value ({"path", "bytes"}) -> what the scorer takes: a file is
    decoded by the package's loader (keeping its path in messages), an in-memory array or tensor is restored
    as it was given; in-memory images are named ``column[index]``."""
    from modeling_afine.image_io import ImageLoadError
    from modeling_afine.image_io import load_image

    path = value.get("path") if isinstance(value, dict) else value
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is None:
        return load_image(path, max_pixels=max_pixels)
    name = path or f"{column}[{index}]"
    if data.startswith(_TORCH) or data.startswith(_NPY):
        image = numpy.load(io.BytesIO(data[len(_TORCH):] if data.startswith(_TORCH) else data), allow_pickle=False)
        height, width = image.shape[-2:] if data.startswith(_TORCH) else image.shape[:2]
        if max_pixels and height * width > max_pixels:
            raise ImageLoadError(f"{name}: image is {width}x{height}, over the limit of {max_pixels:,} pixels")
        if data.startswith(_TORCH):
            import torch

            return torch.from_numpy(image)
        return image
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{name}: {str(exc).split(': ', 1)[-1]}") from exc


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Afine(evaluate.Metric):
    """The A-FINE metric. Scorers are cached per (model, device, dtype) on the instance."""

    def __init__(self, *args, model=None, device=None, dtype=None, batch_size=8, resize_reference=False,
                 max_pixels=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = {"model": model, "device": device, "dtype": dtype, "batch_size": int(batch_size),
                         "resize_reference": bool(resize_reference), "max_pixels": max_pixels}
        self._scorers = {}
        #: set this to an ``AfineScorer`` to use an already loaded model (overrides ``model``/``device``/``dtype``)
        self.scorer = None

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # decode=False: the package's image loader decodes (same rules and errors as the CLI)
            features=datasets.Features({"predictions": datasets.Image(decode=False),
                                        "references": datasets.Image(decode=False)}),
            reference_urls=["https://github.com/ChrisDud0257/AFINE", "https://arxiv.org/abs/2503.11221"],
        )

    # evaluate stores the inputs in an Arrow cache file under datasets.Image(decode=False); every input the
    # scorer accepts is first turned into that storage form here (a refusal is one line), and a computation
    # that fails leaves no cache file behind.

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of (prediction, reference) images (any kind ``AfineScorer`` accepts)."""
        predictions = _encode_column(predictions, "predictions")
        references = _encode_column(references, "references")
        if predictions is not None and references is not None and len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
        return self._cleaning_up(super().add_batch, predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one (prediction, reference) pair of images (any kind ``AfineScorer`` accepts)."""
        prediction = None if prediction is None else _encode(prediction, "prediction")
        reference = None if reference is None else _encode(reference, "reference")
        return self._cleaning_up(super().add, prediction=prediction, reference=reference, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score the pairs given here and/or added before; lower is better (see the module's description)."""
        # evaluate's compute calls add_batch (above) with the raw inputs
        return self._cleaning_up(super().compute, predictions=predictions, references=references, **kwargs)

    def _cleaning_up(self, fn, **kwargs):
        fresh = self.writer is None and getattr(self, "data", None) is None
        try:
            return fn(**kwargs)
        except BaseException:
            if fn.__name__ == "compute" or fresh:
                self._discard_cache()
            raise

    def _discard_cache(self):
        """Forget the stored inputs after a failure: close the writer, release the locks, delete the cache files
        (evaluate itself deletes them only after a successful compute)."""
        paths = [p for p in [self.cache_file_name, *(getattr(self, "file_paths", None) or [])] if p]
        locks = [lock for lock in [self.filelock, *(getattr(self, "filelocks", None) or [])] if lock is not None]
        if self.writer is not None:
            try:
                self.writer.finalize(close_stream=True)
            except Exception:  # noqa: BLE001 - a half-written file is deleted below anyway
                pass
        self.writer = self.data = self.buf_writer = None
        self.cache_file_name = self.filelock = self.selected_feature_format = None
        self.file_paths, self.filelocks = None, None
        for lock in locks:
            try:
                lock.release()
            except Exception:  # noqa: BLE001
                pass
        for path in dict.fromkeys(paths):
            for name in (path, path + ".lock"):
                try:
                    os.remove(name)
                except OSError:
                    pass

    def _get_scorer(self, model, device, dtype, batch_size):
        from modeling_afine.scoring import AfineScorer

        if self.scorer is not None:
            self.scorer.batch_size = batch_size
            return self.scorer
        key = tuple(None if v is None else str(v) for v in (model, device, dtype))
        if key not in self._scorers:
            self._scorers[key] = AfineScorer(model, device=device, dtype=dtype, batch_size=batch_size)
        scorer = self._scorers[key]
        scorer.batch_size = batch_size
        return scorer

    def _compute(self, predictions, references, model=None, device=None, dtype=None, batch_size=None,
                 resize_reference=None, max_pixels=None):
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
        if len(predictions) == 0:
            raise ValueError("A-FINE needs at least one (prediction, reference) pair")
        s = dict(self.settings)
        for name, value in (("model", model), ("device", device), ("dtype", dtype), ("batch_size", batch_size),
                            ("resize_reference", resize_reference), ("max_pixels", max_pixels)):
            if value is not None:
                s[name] = value
        if int(s["batch_size"]) < 1:
            raise ValueError(f"batch_size must be >= 1, got {s['batch_size']}")
        scorer = self._get_scorer(s["model"], s["device"], s["dtype"], int(s["batch_size"]))
        dis = [_decode(value, "predictions", i, s["max_pixels"]) for i, value in enumerate(predictions)]
        ref = [_decode(value, "references", i, s["max_pixels"]) for i, value in enumerate(references)]
        out = scorer.score(dis, ref, resize_reference=bool(s["resize_reference"]))
        result = {}
        for field in FIELDS:
            values = getattr(out, field).double()
            result[field] = [float(v) for v in values]
        for field in FIELDS:
            result["mean_" + field] = float(numpy.mean(result[field]))
        return result

