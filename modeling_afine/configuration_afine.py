"""Configuration of the A-FINE model."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from transformers import CLIPVisionConfig, PretrainedConfig

#: OpenAI CLIP normalisation constants used by A-FINE for input normalisation and head de-normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Defaults of the OpenAI ViT-B/32 vision tower that A-FINE fine-tunes.
_VIT_B32 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)


class AfineConfig(PretrainedConfig):
    r"""Configuration of :class:`~modeling_afine.AfineModel`.

    Holds the CLIP vision tower configuration and every constant that the official ``afine.pth`` does
    **not** store (spec/afine.md §1.5, §1.6, §6.6). The defaults reproduce the official release.

    Args:
        vision_config: a :class:`CLIPVisionConfig` or its dict; defaults to OpenAI ViT-B/32 (hidden 768,
            12 layers, 12 heads, patch 32, image 224, quick_gelu, LayerNorm eps 1e-5).
        natural_hidden_dim: width of the shared per-layer projection of the naturalness head (128).
        natural_mlp_dim: hidden width of the naturalness MLP (768).
        calibration_range: ``(eta1, eta2)`` = upper and lower bound of both calibrated terms, ``(2, -2)``.
        natural_center_init, natural_scale_init: initial (γ3, γ4) of the naturalness calibration
            (the PIPAL fit 4.9592 / 21.5968; no clamp).
        fidelity_center_init, fidelity_scale_init: initial (γ3, γ4) of the fidelity calibration (0.5 / 0.15).
        fidelity_center_bounds: clamp applied to the fidelity calibration centre, ``(0.05, 0.95)``.
        fidelity_scale_bounds: clamp applied to the fidelity calibration scale, ``(0.01, 0.70)``.
        adapter_k_init: initial raw adapter parameter k (softplus is applied), 5.
        score_center: η3 of the final 0–100 mapping, −1.9710 (the code's value; the fit file says −1.9701).
        score_scale: η4 of the final mapping, −2.3734 (only its absolute value is used).
        score_range: ``(high, low)`` of the final mapping, ``(100, 0)``.
        stability_eps: the 1e-10 constant of the official heads and calibrations.
        image_mean, image_std: CLIP normalisation constants.
        size_multiple: inputs are bicubic-stretched up to the next multiple of this (32).
    """

    model_type = "afine"
    sub_configs = {"vision_config": CLIPVisionConfig}
    #: pipeline tasks that a pipeline class registered in this process serves (set by ``modeling_afine`` on its
    #: own class when it registers ``"image-quality-assessment"``; a copy loaded as remote code keeps it empty).
    _local_pipeline_tasks: ClassVar[frozenset] = frozenset()

    def __init__(
        self,
        vision_config: CLIPVisionConfig | dict[str, Any] | None = None,
        natural_hidden_dim: int = 128,
        natural_mlp_dim: int = 768,
        calibration_range: Sequence[float] = (2.0, -2.0),
        natural_center_init: float = 4.9592,
        natural_scale_init: float = 21.5968,
        fidelity_center_init: float = 0.5,
        fidelity_scale_init: float = 0.15,
        fidelity_center_bounds: Sequence[float] = (0.05, 0.95),
        fidelity_scale_bounds: Sequence[float] = (0.01, 0.70),
        adapter_k_init: float = 5.0,
        score_center: float = -1.9710,
        score_scale: float = -2.3734,
        score_range: Sequence[float] = (100.0, 0.0),
        stability_eps: float = 1e-10,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        size_multiple: int = 32,
        **kwargs: Any,
    ) -> None:
        if vision_config is None:
            vision_config = CLIPVisionConfig(**_VIT_B32)
        elif isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**{**_VIT_B32, **vision_config})
        elif not isinstance(vision_config, CLIPVisionConfig):
            raise TypeError(f"vision_config must be a CLIPVisionConfig or dict, got {type(vision_config).__name__}")
        self.vision_config = vision_config
        self.natural_hidden_dim = int(natural_hidden_dim)
        self.natural_mlp_dim = int(natural_mlp_dim)
        self.calibration_range = [float(v) for v in calibration_range]
        self.natural_center_init = float(natural_center_init)
        self.natural_scale_init = float(natural_scale_init)
        self.fidelity_center_init = float(fidelity_center_init)
        self.fidelity_scale_init = float(fidelity_scale_init)
        self.fidelity_center_bounds = [float(v) for v in fidelity_center_bounds]
        self.fidelity_scale_bounds = [float(v) for v in fidelity_scale_bounds]
        self.adapter_k_init = float(adapter_k_init)
        self.score_center = float(score_center)
        self.score_scale = float(score_scale)
        self.score_range = [float(v) for v in score_range]
        self.stability_eps = float(stability_eps)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.size_multiple = int(size_multiple)
        for name, pair in (
            ("calibration_range", self.calibration_range),
            ("fidelity_center_bounds", self.fidelity_center_bounds),
            ("fidelity_scale_bounds", self.fidelity_scale_bounds),
            ("score_range", self.score_range),
        ):
            if len(pair) != 2:
                raise ValueError(f"{name} must have two values, got {pair}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have three values (RGB)")
        if self.size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {self.size_multiple}")
        super().__init__(**kwargs)

    @property
    def custom_pipelines(self) -> dict[str, Any]:
        """The folder's ``custom_pipelines`` (pipeline code shipped with the weights), less the tasks served by a
        locally registered pipeline.

        ``transformers.pipeline(task, model=folder)`` runs a task listed here as remote code, so it would ask
        for ``trust_remote_code`` even when the package is imported and has registered the same pipeline. The
        entry is kept as saved (``to_dict`` and ``save_pretrained`` write it unchanged); only reading it hides
        what this process serves itself.
        """
        stored = self.__dict__.get("custom_pipelines") or {}
        local = type(self)._local_pipeline_tasks
        return {task: spec for task, spec in stored.items() if task not in local} if local else stored

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict[str, Any]) -> None:
        self.__dict__["custom_pipelines"] = value

    @property
    def num_feature_layers(self) -> int:
        """Number of CLIP blocks whose outputs feed the heads (12 for ViT-B/32)."""
        return self.vision_config.num_hidden_layers

    @property
    def fidelity_channels(self) -> list[int]:
        """Channels of the 13 'layers' of both heads: RGB (3) then one entry per CLIP block."""
        return [3] + [self.vision_config.hidden_size] * self.num_feature_layers


__all__ = ["AfineConfig", "CLIP_MEAN", "CLIP_STD"]
