"""A-FINE for the Hugging Face stack: model, image processor, conversion and CLI.

Importing this package registers ``AfineConfig``, ``AfineModel`` and ``AfineImageProcessor`` with the
transformers Auto classes, so ``AutoModel.from_pretrained(dir)`` works for converted checkpoints.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_afine import CLIP_MEAN, CLIP_STD, AfineConfig
from .image_io import ImageLoadError, load_image, load_image_array
from .image_processing_afine import AfineImageProcessor
from .modeling_afine import (
    AfineModel,
    AfineNaturalnessOutput,
    AfineOutput,
    AfineReferenceEncoding,
    resample_position_table,
    stretch_to_multiple,
)

__version__ = "0.1.0"

AutoConfig.register("afine", AfineConfig, exist_ok=True)
AutoModel.register(AfineConfig, AfineModel, exist_ok=True)
AutoImageProcessor.register(AfineConfig, image_processor_classes={"pil": AfineImageProcessor}, exist_ok=True)


def __getattr__(name: str):
    # Heavier helpers are imported lazily.
    if name in ("AfineScorer", "load_afine", "DEFAULT_MODEL_ID"):
        from . import scoring

        return getattr(scoring, name)
    if name in ("convert_afine_checkpoint", "load_official_state_dict"):
        from . import convert_afine_checkpoint as conv

        return getattr(conv, name)
    raise AttributeError(f"module 'modeling_afine' has no attribute {name!r}")


__all__ = [
    "AfineConfig",
    "AfineModel",
    "AfineOutput",
    "AfineNaturalnessOutput",
    "AfineReferenceEncoding",
    "AfineImageProcessor",
    "ImageLoadError",
    "load_image",
    "load_image_array",
    "resample_position_table",
    "stretch_to_multiple",
    "CLIP_MEAN",
    "CLIP_STD",
    "AfineScorer",
    "load_afine",
    "DEFAULT_MODEL_ID",
]
