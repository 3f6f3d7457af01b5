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

import datasets
import evaluate
import numpy

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
    predictions: images under test (distorted / enhanced): PIL images, file paths, or HxWxC uint8 arrays.
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


def _decode(value, column, index, max_pixels=None):
    """One stored ``datasets.Image(decode=False)`` value ({"path", "bytes"}) -> RGB PIL image via the package's
    loader. A file keeps its path in messages; in-memory images are named ``column[index]``."""
    from modeling_afine.image_io import ImageLoadError
    from modeling_afine.image_io import load_image

    path = value.get("path") if isinstance(value, dict) else value
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is None:
        return load_image(path, max_pixels=max_pixels)
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageLoadError as exc:
        name = path or f"{column}[{index}]"
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

