"""The ``"image-quality-assessment"`` task of ``transformers.pipeline`` for A-FINE.

With the package imported the task is registered in transformers' ``PIPELINE_REGISTRY`` (see
``_auto_registration``)::

    import modeling_afine
    from transformers import pipeline

    pipe = pipeline("image-quality-assessment", model="afine")        # a converted folder or a Hub id
    pipe("distorted.png", reference="reference.png")
    # {'score': ..., 'score_raw': ..., 'fidelity': ..., 'naturalness_distorted': ..., 'naturalness_reference': ...}
    pipe([{"distorted": "a.png", "reference": "ref.png"}, ...], batch_size=8)    # a list of such dicts
    pipe("photo.png")                                                 # no reference: {'naturalness': ...}

Every converted or exported folder also carries this file and names it in ``config.json``
(``custom_pipelines``), so without the package ``pipeline("image-quality-assessment", model=folder,
trust_remote_code=True)`` runs the same code. That is why this module imports only torch, transformers and its
siblings, relatively (``image_processing_afine``, which reads files through ``image_io``, the package's one image
loader, and ``modeling_afine``): transformers copies them next to it as it does for the model code.

Every number is **lower is better**: ``score`` 0–100, ``score_raw`` unbounded, ``fidelity`` and the two
naturalness values in (-2, 2). They are the numbers of :class:`~modeling_afine.AfineModel` (and of
``AfineScorer``) on the same images: the image processor's official preprocessing, then the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformers import Pipeline

from .image_processing_afine import AfineImageProcessor
from .modeling_afine import SCORE_FIELDS

#: The pipeline task name.
TASK = "image-quality-assessment"
#: The numbers returned for a (distorted, reference) pair, all lower-is-better.
PAIR_FIELDS = SCORE_FIELDS
_INPUT_KEYS = ("distorted", "reference")

__all__ = ["ImageQualityAssessmentPipeline", "TASK", "PAIR_FIELDS", "custom_pipelines_entry"]


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` value of a model folder's ``config.json`` that names this module's pipeline."""
    return {TASK: {"impl": f"{__name__.rsplit('.', 1)[-1]}.ImageQualityAssessmentPipeline", "pt": ["AutoModel"],
                   "type": "image"}}


@dataclass
class _Prepared:
    """One input after the image processor: ``[1, 3, H', W']`` CLIP-normalised tensors (H', W' multiples of 32)."""

    distorted: torch.Tensor
    reference: Optional[torch.Tensor] = None


def _describe(image: Any) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


class ImageQualityAssessmentPipeline(Pipeline):
    """A-FINE full-reference image quality (and no-reference naturalness) as a transformers pipeline.

    Call forms (images are paths, PIL images, numpy ``(H, W[, C])`` arrays — uint8, uint16 or float in
    [0, 1] — or torch ``(C, H, W)`` tensors; the distorted image and its reference must have the same size
    unless ``resize_reference=True``):

    * ``pipe(distorted, reference=reference)`` -> ``dict`` of the five floats :data:`PAIR_FIELDS`;
    * ``pipe({"distorted": d, "reference": r})`` -> the same;
    * ``pipe([{"distorted": d, "reference": r}, ...], batch_size=8)`` -> a list of such dicts, in input order
      (``pipe([d1, d2], reference=r)`` scores several images against one reference);
    * ``pipe(image)`` or ``pipe({"distorted": image})`` -> ``{"naturalness": float}``, the calibrated
      no-reference naturalness N in (-2, 2).

    Lower is better for every number. A batch mixes sizes freely: images of one size run together, nothing is
    padded, and a reference shared by a batch goes through the model once.
    """

    _load_processor = False
    _load_image_processor = None  # the folder's processor when it has one; else built from the model config
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if getattr(config, "model_type", None) != "afine" or not hasattr(self.model, "naturalness"):
            raise ValueError(
                f"the {TASK} pipeline needs an A-FINE model (model_type 'afine'), got "
                f"{type(self.model).__name__} (model_type {getattr(config, 'model_type', None)!r})"
            )
        if self.image_processor is None:
            self.image_processor = AfineImageProcessor.for_config(config)

    def _sanitize_parameters(
        self, reference: Any = None, resize_reference: Optional[bool] = None, **unknown: Any
    ) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(f"{TASK} pipeline: unexpected argument(s) {', '.join(sorted(unknown))}")
        preprocess: dict[str, Any] = {}
        if reference is not None:
            preprocess["reference"] = reference
        if resize_reference is not None:
            preprocess["resize_reference"] = bool(resize_reference)
        return preprocess, {}, {}

    def __call__(self, inputs: Any, reference: Any = None, **kwargs: Any) -> Any:
        """Score ``inputs`` (see the class docstring); ``reference`` applies to every input that has none."""
        if reference is not None:
            kwargs["reference"] = reference
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: Any, reference: Any = None, resize_reference: bool = False) -> dict[str, _Prepared]:
        distorted = inputs
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(_INPUT_KEYS))
            if unknown or "distorted" not in inputs:
                raise ValueError(
                    f"{TASK} pipeline: an input dict needs the key 'distorted' (and optionally 'reference'), got "
                    f"keys {sorted(inputs)}"
                )
            distorted = inputs["distorted"]
            if inputs.get("reference") is not None:
                if reference is not None:
                    raise ValueError(
                        f"{TASK} pipeline: {_describe(distorted)} has a reference in its dict and reference= was "
                        "given too; give one of them"
                    )
                reference = inputs["reference"]
        if distorted is None:
            raise ValueError(f"{TASK} pipeline: no distorted image given")
        if reference is None:
            batch = self.image_processor(images=distorted)
        else:
            batch = self.image_processor(distorted, reference, resize_reference=resize_reference)
        if batch["distorted"].shape[0] != 1:
            raise ValueError(
                f"{TASK} pipeline: each input is one image, got a batch of {batch['distorted'].shape[0]}; pass a "
                "list of images (or of {'distorted': ..., 'reference': ...} dicts) instead"
            )
        return {"item": _Prepared(batch["distorted"], batch.get("reference"))}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, list[dict[str, torch.Tensor]]]:
        # batch_size=1 hands over one item; larger batches a list of them (transformers' collate keeps
        # non-tensor values as lists, so images of different sizes are never padded or stacked here)
        items = model_inputs["item"]
        items = items if isinstance(items, list) else [items]
        groups: dict[tuple[bool, tuple[int, ...]], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.reference is not None, tuple(item.distorted.shape[-2:])), []).append(i)
        results: list[dict[str, torch.Tensor]] = [{} for _ in items]
        for (paired, _), indices in groups.items():
            distorted = torch.cat([items[i].distorted for i in indices]).to(self.device)
            if not paired:
                naturalness = self.model.naturalness(distorted).naturalness
                for j, i in enumerate(indices):
                    results[i] = {"naturalness": naturalness[j]}
                continue
            refs = [items[i].reference for i in indices]
            shared = all(r is refs[0] or torch.equal(r, refs[0]) for r in refs[1:])
            reference = (refs[0] if shared else torch.cat(refs)).to(self.device)
            out = self.model(distorted=distorted, reference=reference)
            for j, i in enumerate(indices):
                results[i] = {name: getattr(out, name)[j] for name in PAIR_FIELDS}
        return {"scores": results}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, float]:
        scores = model_outputs["scores"]
        if isinstance(scores, list):  # batch_size=1: the list of the one item
            (scores,) = scores
        return {name: float(value) for name, value in scores.items()}
