"""A-FINE (CVPR 2025) as a transformers ``PreTrainedModel``.

Numerical contract: spec/afine.md §1 (the official ``QuickInference/afine.py``). Every A-FINE quantity is
"lower is better": raw naturalness u, raw fidelity D, calibrated N and F, the combined score A and the
0–100 score.

This file only imports torch, transformers and its sibling ``configuration_afine`` so it can be copied
next to a checkpoint and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings
from transformers.utils import ModelOutput

from .configuration_afine import AfineConfig

# transformers >= 5 initialisers: they skip tensors already loaded from a checkpoint.
from transformers import initialization as _init

__all__ = [
    "AfineModel",
    "AfineOutput",
    "AfineNaturalnessOutput",
    "AfineReferenceEncoding",
    "resample_position_table",
    "stretch_to_multiple",
    "target_size",
]


# --------------------------------------------------------------------------------------------------
# Shape helpers shared by the model and the image processor
# --------------------------------------------------------------------------------------------------


def target_size(height: int, width: int, multiple: int = 32) -> tuple[int, int]:
    """The official target size: each side rounded *up* to the next multiple (never down)."""
    return (-(-int(height) // multiple) * multiple, -(-int(width) // multiple) * multiple)


def stretch_to_multiple(
    pixel_values: torch.Tensor, multiple: int = 32, size: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """Bicubically *stretch* ``[B, C, H, W]`` images up to the next multiple of ``multiple``.

    Faithful to the official code: it resizes (does not pad), on the already normalised tensor, with
    ``align_corners=False``, no antialias and no clamping (bicubic overshoot is kept). ``size`` forces the
    target (used to bring a reference to the distorted image's target). Returns the input unchanged when
    it already has the target size.
    """
    height, width = pixel_values.shape[-2:]
    out = tuple(size) if size is not None else target_size(height, width, multiple)
    if (height, width) == out:
        return pixel_values
    dtype = pixel_values.dtype
    x = pixel_values if dtype in (torch.float32, torch.float64) else pixel_values.float()
    return F.interpolate(x, size=out, mode="bicubic", align_corners=False).to(dtype)


def resample_position_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A-FINE's positional-embedding resampling: ``[P, D]`` -> ``[length, D]``.

    Faithful to the official CLIP fork: a **1-D** bicubic interpolation over the flattened
    (CLS + 7x7 grid) table, CLS included, done as ``F.interpolate`` on a ``[1, 1, P, D]`` tensor to
    ``(length, D)``. The feature axis keeps its size so columns never mix; the grid structure is *not*
    preserved. Do not replace this by 2-D grid interpolation: the released weights were fine-tuned with it.
    Identity when ``length == P``.
    """
    num_positions, dim = table.shape
    if length == num_positions:
        return table
    out = F.interpolate(table[None, None].float(), size=(length, dim), mode="bicubic", align_corners=False)
    return out[0, 0].to(table.dtype)


class AfineVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP patch/class embeddings with A-FINE's 1-D positional resampling; parameter names unchanged."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return resample_position_table(self.position_embedding.weight, embeddings.shape[1])[None]

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = True) -> torch.Tensor:
        # A-FINE runs at native resolution: always resample, whatever the caller asked.
        return super().forward(pixel_values, interpolate_pos_encoding=True)


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


def _token_mean_var(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population variance over tokens: ``[B, N, C]`` -> two ``[B, 1, C]``."""
    mean = tokens.mean(1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(1, keepdim=True)
    return mean, var


def _pixel_tokens(pixel_values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo CLIP normalisation and flatten to RGB tokens: ``[B, 3, H, W]`` -> ``[B, H*W, 3]`` (about 0..1)."""
    return (pixel_values * std + mean).flatten(2).transpose(1, 2)


class AfineNaturalnessHead(nn.Module):
    """Naturalness head (official ``AFINEQhead``): image + 12 CLIP features -> raw naturalness u, shape [B].

    Lower is better; u is unbounded (its scale is set by the ranking loss of training stage 1).
    """

    def __init__(self, config: AfineConfig) -> None:
        super().__init__()
        hidden = config.vision_config.hidden_size
        self.proj_feat = nn.Linear(2 * hidden, config.natural_hidden_dim)
        self.proj_head = nn.Sequential(
            nn.Linear(2 * 3 + config.natural_hidden_dim * config.num_feature_layers, config.natural_mlp_dim),
            nn.GELU(),
            nn.Linear(config.natural_mlp_dim, 1),
        )
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1))

    def forward(self, pixel_values: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        pieces = []
        mean, var = _token_mean_var(_pixel_tokens(pixel_values, self.mean, self.std))
        pieces.append(torch.cat([mean.flatten(1), var.flatten(1)], dim=1))
        for feat in features:
            mean, var = _token_mean_var(F.relu(feat))
            # One projection shared by all 12 layers, as in the release.
            pieces.append(self.proj_feat(torch.cat([mean.flatten(1), var.flatten(1)], dim=1)))
        return self.proj_head(torch.cat(pieces, dim=1)).squeeze(1)


class AfineFidelityHead(nn.Module):
    """Fidelity head (official ``AFINEDhead``, DISTS-like): raw fidelity D >= 0, shape [B]. Lower is better.

    D = 1 - sum_k sum_c (alpha_kc * S1_kc + beta_kc * S2_kc) with softplus weights normalised to sum to 1.
    D is symmetric in its two images and D(x, x) is about 0.
    """

    def __init__(self, config: AfineConfig) -> None:
        super().__init__()
        self.channels = config.fidelity_channels
        total = sum(self.channels)
        self.eps = config.stability_eps
        self.alpha = nn.Parameter(torch.empty(1, 1, total))
        self.beta = nn.Parameter(torch.empty(1, 1, total))
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1))

    def layer_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The normalised weights alpha-hat and beta-hat, split per layer (each ``[1, 1, C_k]``)."""
        alpha = F.softplus(self.alpha)
        beta = F.softplus(self.beta)
        total = alpha.sum() + beta.sum() + self.eps
        return list(torch.split(alpha / total, self.channels, dim=2)), list(torch.split(beta / total, self.channels, dim=2))

    def forward(
        self,
        x_pixels: torch.Tensor,
        y_pixels: torch.Tensor,
        x_features: list[torch.Tensor],
        y_features: list[torch.Tensor],
    ) -> torch.Tensor:
        alphas, betas = self.layer_weights()
        xs = [_pixel_tokens(x_pixels, self.mean, self.std)] + [F.relu(f) for f in x_features]
        ys = [_pixel_tokens(y_pixels, self.mean, self.std)] + [F.relu(f) for f in y_features]
        c1 = c2 = self.eps
        dist1 = 0.0
        dist2 = 0.0
        for alpha, beta, x, y in zip(alphas, betas, xs, ys):
            x_mean, x_var = _token_mean_var(x)
            y_mean, y_var = _token_mean_var(y)
            s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
            # Uncentered covariance E[xy] - E[x]E[y], exactly as the release computes it.
            cov = (x * y).mean(1, keepdim=True) - x_mean * y_mean
            s2 = (2 * cov + c2) / (x_var + y_var + c2)
            dist1 = dist1 + (alpha * s1).sum(2)
            dist2 = dist2 + (beta * s2).sum(2)
        return (1 - (dist1 + dist2)).squeeze(1)


class AfineNaturalnessCalibration(nn.Module):
    """N = (eta1 - eta2) * sigmoid((u - yita3) / (|yita4| + eps)) + eta2, in (-2, 2). No clamp.

    The official code's batch-1-only ``if exp_pow >= 10`` branch computes exactly this sigmoid.
    """

    def __init__(self, config: AfineConfig) -> None:
        super().__init__()
        self.yita3 = nn.Parameter(torch.tensor(config.natural_center_init))
        self.yita4 = nn.Parameter(torch.tensor(config.natural_scale_init))
        self.high, self.low = config.calibration_range
        self.eps = config.stability_eps

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        z = (raw - self.yita3) / (self.yita4.abs() + self.eps)
        return (self.high - self.low) * torch.sigmoid(z) + self.low


class AfineFidelityCalibration(nn.Module):
    """F = (eta1 - eta2) * sigmoid((D - clamp(yita3)) / (|clamp(yita4)| + eps)) + eta2, in (-2, 2).

    The clamp bounds ([0.05, 0.95] and [0.01, 0.70]) are not in the checkpoint; they live in the config.
    """

    def __init__(self, config: AfineConfig) -> None:
        super().__init__()
        self.yita3 = nn.Parameter(torch.tensor(config.fidelity_center_init))
        self.yita4 = nn.Parameter(torch.tensor(config.fidelity_scale_init))
        self.high, self.low = config.calibration_range
        self.center_bounds = tuple(config.fidelity_center_bounds)
        self.scale_bounds = tuple(config.fidelity_scale_bounds)
        self.eps = config.stability_eps

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        center = torch.clamp(self.yita3, *self.center_bounds)
        scale = torch.clamp(self.yita4, *self.scale_bounds)
        z = (raw - center) / (scale.abs() + self.eps)
        return (self.high - self.low) * torch.sigmoid(z) + self.low


class AfineAdapter(nn.Module):
    """A = exp(softplus(k) * (N_ref - N_dis)) * N_dis + F (official ``AFINELearnLambda``). Lower is better."""

    def __init__(self, config: AfineConfig) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(config.adapter_k_init))

    def weight(self, natural_dis: torch.Tensor, natural_ref: torch.Tensor) -> torch.Tensor:
        """The adaptive weight lambda = exp(softplus(k) * (N_ref - N_dis)) > 0."""
        return torch.exp(F.softplus(self.k) * (natural_ref - natural_dis))

    def forward(self, natural_dis: torch.Tensor, natural_ref: torch.Tensor, fidelity: torch.Tensor) -> torch.Tensor:
        return self.weight(natural_dis, natural_ref) * natural_dis + fidelity


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class AfineOutput(ModelOutput):
    """Outputs of :meth:`AfineModel.forward`. Every field has shape ``(batch,)`` and **lower is better**.

    Attributes:
        score: the 0–100 A-FINE score (official ``afine_all_scale``); 0 best, 100 worst.
        score_raw: the combined A = lambda * N_dis + F (``afine_all``), unbounded, about (-1e9, 4).
        fidelity: calibrated fidelity F of distorted to reference, in (-2, 2) (``fidelity_disref_scale``).
        naturalness_distorted: calibrated naturalness N of the distorted image, in (-2, 2) (``natural_dis_scale``).
        naturalness_reference: calibrated naturalness N of the reference, in (-2, 2) (``natural_ref_scale``).
        fidelity_raw: uncalibrated fidelity D in [0, 2), 0 for identical images.
        naturalness_distorted_raw: uncalibrated naturalness u of the distorted image (unbounded).
        naturalness_reference_raw: uncalibrated naturalness u of the reference (unbounded).
        adaptive_weight: lambda = exp(softplus(k) (N_ref - N_dis)) > 0, the weight of N_dis in A.
    """

    score: Optional[torch.Tensor] = None
    score_raw: Optional[torch.Tensor] = None
    fidelity: Optional[torch.Tensor] = None
    naturalness_distorted: Optional[torch.Tensor] = None
    naturalness_reference: Optional[torch.Tensor] = None
    fidelity_raw: Optional[torch.Tensor] = None
    naturalness_distorted_raw: Optional[torch.Tensor] = None
    naturalness_reference_raw: Optional[torch.Tensor] = None
    adaptive_weight: Optional[torch.Tensor] = None


@dataclass
class AfineNaturalnessOutput(ModelOutput):
    """No-reference outputs of :meth:`AfineModel.naturalness`; shape ``(batch,)``, lower is better.

    Attributes:
        naturalness: calibrated naturalness N in (-2, 2).
        naturalness_raw: uncalibrated naturalness u (unbounded).
    """

    naturalness: Optional[torch.Tensor] = None
    naturalness_raw: Optional[torch.Tensor] = None


@dataclass
class AfineReferenceEncoding(ModelOutput):
    """A reference image encoded once, to score many distorted images against it.

    Attributes:
        pixel_values: the stretched, normalised reference ``[R, 3, H', W']`` (R = 1 or the batch size).
        features: the 12 CLIP block outputs without CLS, each ``[R, H'W'/32^2, hidden]``, fp32.
        naturalness: calibrated N_ref ``[R]``.
        naturalness_raw: raw u_ref ``[R]``.
        image_size: ``(H, W)`` of the reference before the stretch.
    """

    pixel_values: Optional[torch.Tensor] = None
    features: Optional[tuple[torch.Tensor, ...]] = None
    naturalness: Optional[torch.Tensor] = None
    naturalness_raw: Optional[torch.Tensor] = None
    image_size: Optional[tuple[int, int]] = None


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class AfinePreTrainedModel(PreTrainedModel):
    config_class = AfineConfig
    config: AfineConfig
    base_model_prefix = "afine"
    main_input_name = "distorted"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings"]
    # The heads use 1e-10 constants that underflow in half precision: always keep them in fp32.
    _keep_in_fp32_modules_strict = [
        "natural_head",
        "fidelity_head",
        "natural_calibration",
        "fidelity_calibration",
        "adapter",
    ]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        config = self.config
        if isinstance(module, (AfineNaturalnessHead, AfineFidelityHead)):
            _init.copy_(module.mean, torch.tensor(config.image_mean).view(1, 3, 1, 1))
            _init.copy_(module.std, torch.tensor(config.image_std).view(1, 3, 1, 1))
        if isinstance(module, AfineNaturalnessHead):
            # The release trains this head from PyTorch's default Linear init, not transformers' normal(0.02);
            # the head is visited after its Linear children, so this overrides the generic init.
            for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
                _init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(linear.in_features)
                _init.uniform_(linear.bias, -bound, bound)
        if isinstance(module, AfineFidelityHead):
            _init.normal_(module.alpha, mean=0.1, std=0.01)
            _init.normal_(module.beta, mean=0.1, std=0.01)
        elif isinstance(module, AfineNaturalnessCalibration):
            _init.constant_(module.yita3, config.natural_center_init)
            _init.constant_(module.yita4, config.natural_scale_init)
        elif isinstance(module, AfineFidelityCalibration):
            _init.constant_(module.yita3, config.fidelity_center_init)
            _init.constant_(module.yita4, config.fidelity_scale_init)
        elif isinstance(module, AfineAdapter):
            _init.constant_(module.k, config.adapter_k_init)


class AfineModel(AfinePreTrainedModel):
    """A-FINE: adaptive fidelity–naturalness full-reference IQA on a CLIP ViT-B/32 backbone.

    ``forward(distorted, reference)`` takes CLIP-normalised images ``[B, 3, H, W]`` (as produced by
    :class:`AfineImageProcessor`) of any size; sides that are not multiples of 32 are bicubic-stretched up
    to the next multiple exactly as the official code does. The reference may have batch 1 (broadcast to
    all distorted images) or B. The two inputs are **not** interchangeable: the distorted image comes first.

    Submodules keep transformers' CLIP parameter names under ``vision_model`` so a stock
    ``CLIPVisionModel`` checkpoint can initialise training (:meth:`load_clip_vision_weights`).
    """

    def __init__(self, config: AfineConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.vision_model.embeddings = AfineVisionEmbeddings(config.vision_config)
        self.natural_head = AfineNaturalnessHead(config)
        self.fidelity_head = AfineFidelityHead(config)
        self.natural_calibration = AfineNaturalnessCalibration(config)
        self.fidelity_calibration = AfineFidelityCalibration(config)
        self.adapter = AfineAdapter(config)
        self.post_init()

    # ---------------------------------------------------------------- pieces

    def _check_pixels(self, pixel_values: torch.Tensor, name: str) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [B, 3, H, W], got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"{name} must have shape [B, 3, H, W], got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise ValueError(f"{name} must be a floating-point, CLIP-normalised tensor (use AfineImageProcessor), got {pixel_values.dtype}")
        if pixel_values.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")

    def _head_dtype(self) -> torch.dtype:
        return self.fidelity_head.alpha.dtype

    def extract_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The 12 CLIP block outputs (before the post-layernorm, CLS dropped) for stretched inputs.

        Args:
            pixel_values: ``[B, 3, H, W]`` with H and W multiples of the patch size.

        Returns:
            A tuple of ``num_hidden_layers`` tensors ``[B, H*W/patch^2, hidden]``, cast to the heads' dtype (fp32).
        """
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True)
        dtype = self._head_dtype()
        return tuple(h[:, 1:].to(dtype) for h in out.hidden_states[1:])

    def _naturalness_from_features(self, pixels: torch.Tensor, features) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            raw = self.natural_head(pixels.to(self._head_dtype()), list(features))
            return self.natural_calibration(raw), raw

    def _prepare(self, pixel_values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return stretch_to_multiple(pixel_values, self.config.size_multiple, size=size)

    # ---------------------------------------------------------------- public API

    def naturalness(self, images: torch.Tensor) -> AfineNaturalnessOutput:
        """No-reference path: calibrated and raw naturalness of ``images`` ``[B, 3, H, W]`` (lower is better)."""
        self._check_pixels(images, "images")
        size = target_size(*images.shape[-2:], self.config.size_multiple)
        pixels = self._prepare(images, size)
        n, raw = self._naturalness_from_features(pixels, self.extract_features(pixels))
        return AfineNaturalnessOutput(naturalness=n, naturalness_raw=raw)

    def encode_reference(self, reference: torch.Tensor) -> AfineReferenceEncoding:
        """Encode reference image(s) ``[R, 3, H, W]`` once; pass the result as ``reference_encoding``."""
        self._check_pixels(reference, "reference")
        image_size = tuple(int(s) for s in reference.shape[-2:])
        pixels = self._prepare(reference, target_size(*image_size, self.config.size_multiple))
        features = self.extract_features(pixels)
        n, raw = self._naturalness_from_features(pixels, features)
        return AfineReferenceEncoding(
            pixel_values=pixels, features=features, naturalness=n, naturalness_raw=raw, image_size=image_size
        )

    def forward(
        self,
        distorted: torch.Tensor,
        reference: Optional[torch.Tensor] = None,
        reference_encoding: Optional[AfineReferenceEncoding] = None,
        return_dict: Optional[bool] = None,
    ) -> AfineOutput | tuple:
        """Score ``distorted`` against ``reference``. Lower is better for every output.

        Args:
            distorted: CLIP-normalised images ``[B, 3, H, W]`` (the image under test).
            reference: CLIP-normalised references ``[B or 1, 3, H, W]``, the same H and W as ``distorted``.
            reference_encoding: instead of ``reference``, the result of :meth:`encode_reference`.
            return_dict: return an :class:`AfineOutput` (default) or a tuple in its field order.

        Returns:
            :class:`AfineOutput` with fields of shape ``(B,)``.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        self._check_pixels(distorted, "distorted")
        if (reference is None) == (reference_encoding is None):
            raise ValueError("pass exactly one of `reference` or `reference_encoding`")
        batch = distorted.shape[0]
        image_size = tuple(int(s) for s in distorted.shape[-2:])
        size = target_size(*image_size, self.config.size_multiple)

        if reference is not None:
            self._check_pixels(reference, "reference")
            ref_size = tuple(int(s) for s in reference.shape[-2:])
            if ref_size != image_size:
                raise ValueError(
                    f"distorted images are {image_size[0]}x{image_size[1]} but the reference is "
                    f"{ref_size[0]}x{ref_size[1]}; A-FINE compares images of the same size "
                    "(AfineImageProcessor(resize_reference=True) stretches the reference to the distorted size)"
                )
            if reference.shape[0] not in (1, batch):
                raise ValueError(f"reference batch must be 1 or {batch}, got {reference.shape[0]}")
            dis_pixels = self._prepare(distorted, size)
            ref_pixels = self._prepare(reference, size)
            if reference.shape[0] == batch:
                # One backbone pass over distorted and reference together.
                feats = self.extract_features(torch.cat([dis_pixels, ref_pixels.to(dis_pixels.dtype)], dim=0))
                dis_feats = tuple(f[:batch] for f in feats)
                ref_feats = tuple(f[batch:] for f in feats)
            else:
                dis_feats = self.extract_features(dis_pixels)
                ref_feats = self.extract_features(ref_pixels)
            natural_ref, natural_ref_raw = self._naturalness_from_features(ref_pixels, ref_feats)
        else:
            enc = reference_encoding
            if enc.image_size is not None and tuple(enc.image_size) != image_size:
                raise ValueError(
                    f"distorted images are {image_size[0]}x{image_size[1]} but the reference encoding was made "
                    f"from a {enc.image_size[0]}x{enc.image_size[1]} image"
                )
            if enc.pixel_values.shape[0] not in (1, batch):
                raise ValueError(f"reference encoding batch must be 1 or {batch}, got {enc.pixel_values.shape[0]}")
            dis_pixels = self._prepare(distorted, size)
            dis_feats = self.extract_features(dis_pixels)
            ref_pixels, ref_feats = enc.pixel_values, enc.features
            natural_ref, natural_ref_raw = enc.naturalness, enc.naturalness_raw

        natural_dis, natural_dis_raw = self._naturalness_from_features(dis_pixels, dis_feats)
        with torch.autocast(device_type=distorted.device.type, enabled=False):
            hd = self._head_dtype()
            fidelity_raw = self.fidelity_head(dis_pixels.to(hd), ref_pixels.to(hd), list(dis_feats), list(ref_feats))
            fidelity = self.fidelity_calibration(fidelity_raw)
            natural_ref = natural_ref.expand(batch)
            natural_ref_raw = natural_ref_raw.expand(batch)
            weight = self.adapter.weight(natural_dis, natural_ref)
            score_raw = weight * natural_dis + fidelity  # = self.adapter(natural_dis, natural_ref, fidelity)
            score = self.scale_score(score_raw)

        out = AfineOutput(
            score=score,
            score_raw=score_raw,
            fidelity=fidelity,
            naturalness_distorted=natural_dis,
            naturalness_reference=natural_ref,
            fidelity_raw=fidelity_raw,
            naturalness_distorted_raw=natural_dis_raw,
            naturalness_reference_raw=natural_ref_raw,
            adaptive_weight=weight,
        )
        return out if return_dict else out.to_tuple()

    def scale_score(self, score_raw: torch.Tensor) -> torch.Tensor:
        """Map A to 0–100: high * sigmoid((A - eta3) / (|eta4| + eps)) + low (official ``scale_finalscore``).

        The official batch-1-only ``if exp_pow >= 10`` branch computes exactly this sigmoid.
        """
        high, low = self.config.score_range
        z = (score_raw - self.config.score_center) / (abs(self.config.score_scale) + self.config.stability_eps)
        return (high - low) * torch.sigmoid(z) + low

    def load_clip_vision_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a transformers ``CLIPVisionModel`` state dict (flat or ``vision_model.``-prefixed) into the backbone.

        Raises ``ValueError`` listing missing/unexpected/mis-shaped keys instead of loading partially.
        """
        cleaned = {}
        for key, value in state_dict.items():
            if key.startswith("vision_model."):
                key = key[len("vision_model.") :]
            if key.startswith("text_model.") or key in ("logit_scale", "text_projection.weight", "visual_projection.weight"):
                continue
            cleaned[key] = value
        own = self.vision_model.state_dict()
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own))
        shapes = sorted(k for k in set(own) & set(cleaned) if tuple(own[k].shape) != tuple(cleaned[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(
                "CLIP vision state dict does not match the backbone: "
                f"missing={missing} unexpected={unexpected} wrong_shape={shapes}"
            )
        self.vision_model.load_state_dict(cleaned, strict=True)
