"""A-FINE for the Hugging Face stack: model, image processor, conversion and CLI.

Importing this package is cheap: nothing from torch or transformers is imported until a name that needs
them is used (``from modeling_afine import AfineModel`` imports it then). ``AfineConfig``, ``AfineModel`` and
``AfineImageProcessor`` are registered with the transformers Auto classes as soon as transformers' Auto
registries are imported (at once if they already are), so ``import modeling_afine`` followed by
``AutoModel.from_pretrained(dir)`` works for converted checkpoints (see ``_auto_registration``).
``transformers.pipeline("image-quality-assessment", model=dir)`` is registered the same way (``pipeline_afine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _auto_registration

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "AfineConfig": "configuration_afine",
    "CLIP_MEAN": "configuration_afine",
    "CLIP_STD": "configuration_afine",
    "ImageLoadError": "image_io",
    "load_image": "image_io",
    "load_image_array": "image_io",
    "AfineImageProcessor": "image_processing_afine",
    "AfineModel": "modeling_afine",
    "AfineNaturalnessOutput": "modeling_afine",
    "AfineOutput": "modeling_afine",
    "AfineReferenceEncoding": "modeling_afine",
    "resample_position_table": "modeling_afine",
    "stretch_to_multiple": "modeling_afine",
    "AfineScorer": "scoring",
    "load_afine": "scoring",
    "DEFAULT_MODEL_ID": "model_source",
    "ModelNotAvailableError": "model_source",
    "resolve_model_dir": "model_source",
    "load_official_state_dict": "convert_afine_checkpoint",
    "ImageQualityAssessmentPipeline": "pipeline_afine",
    "AfineLoss": "loss",
    "AfineMetric": "metric",
    "score_methods": "method_scores",
    "Leaderboard": "leaderboard",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .configuration_afine import CLIP_MEAN, CLIP_STD, AfineConfig
    from .image_io import ImageLoadError, load_image, load_image_array
    from .image_processing_afine import AfineImageProcessor
    from .model_source import DEFAULT_MODEL_ID, ModelNotAvailableError, resolve_model_dir
    from .modeling_afine import (
        AfineModel,
        AfineNaturalnessOutput,
        AfineOutput,
        AfineReferenceEncoding,
        resample_position_table,
        stretch_to_multiple,
    )
    from .scoring import AfineScorer, load_afine
    from .pipeline_afine import ImageQualityAssessmentPipeline
    from .loss import AfineLoss
    from .metric import AfineMetric
    from .method_scores import score_methods
    from .leaderboard import Leaderboard


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modeling_afine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


_auto_registration.install()
