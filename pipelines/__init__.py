"""The A-FINE diffusion enhancer (PASD-based, the model that generated DiffIQA) on diffusers.

Heavy modules are imported lazily, so ``import pipelines`` (and ``afine enhancer --help``) stays
cheap. This package must not import ``modeling_afine`` at import time (the generator and CLI use
``modeling_afine.image_io`` for reading user images, lazily).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "PASDUNet2DConditionModel": "unet_paca",
    "EnhancerPipeline": "pipeline_enhancer",
    "EnhancerPipelineOutput": "pipeline_enhancer",
    "DEFAULT_PROMPT": "pipeline_enhancer",
    "DEFAULT_NEGATIVE_PROMPT": "pipeline_enhancer",
    "make_inference_scheduler": "noising",
    "double_noise": "noising",
    "wavelet_color_fix": "wavelet",
    "WeakDegradation": "degradations",
    "gt_only_downsample": "degradations",
    "DiffIQASettings": "diffiqa_generator",
    "generate_diffiqa": "diffiqa_generator",
    "read_manifest": "diffiqa_generator",
    "ModelSourceError": "model_source",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .degradations import WeakDegradation, gt_only_downsample
    from .diffiqa_generator import DiffIQASettings, generate_diffiqa, read_manifest
    from .model_source import ModelSourceError
    from .noising import double_noise, make_inference_scheduler
    from .pipeline_enhancer import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, EnhancerPipeline, EnhancerPipelineOutput
    from .unet_paca import PASDUNet2DConditionModel
    from .wavelet import wavelet_color_fix


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
