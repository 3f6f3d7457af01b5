"""A-FINE (CVPR 2025) as a transformers ``PreTrainedModel``.

Numerical contract: spec/afine.md §1 (the official ``QuickInference/afine.py``). Every A-FINE quantity is
"lower is better": raw naturalness u, raw fidelity D, calibrated N and F, the combined score A and the
0–100 score.

This file only imports torch, transformers and its sibling ``configuration_afine`` so it can be copied
next to a checkpoint and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention, CLIPVisionEmbeddings
from transformers.utils import ModelOutput

from .configuration_afine import AfineConfig
from .image_io import format_size

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
        weight = self.patch_embedding.weight
        if weight.dtype != torch.bfloat16 or not _plain_cpu_inference(pixel_values, weight):
            return super().forward(pixel_values, interpolate_pos_encoding=True)
        # bf16 on CPU: the stride-32 patch convolution as one GEMM over unfolded patches; oneDNN's bf16
        # convolution runs far below the GEMM rate on big images.
        batch, channels, height, width = pixel_values.shape
        patch = self.patch_size
        rows, cols = height // patch, width // patch  # the convolution drops a remainder the same way
        patches = (
            pixel_values[:, :, : rows * patch, : cols * patch]
            .to(weight.dtype)
            .view(batch, channels, rows, patch, cols, patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch * rows * cols, channels * patch * patch)
        )
        patch_embeds = torch.matmul(patches, weight.view(weight.shape[0], -1).t()).view(batch, rows * cols, -1)
        del patches
        class_embeds = self.class_embedding.to(weight.dtype).expand(batch, 1, -1)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        return embeddings + self.interpolate_pos_encoding(embeddings, height, width)


#: CLIP's quick_gelu slope: x * sigmoid(1.702 x).
_QUICK_GELU_SLOPE = 1.702


class _QuickGELU(nn.Module):
    """CLIP's quick_gelu, x * sigmoid(1.702 x), computed in place of its input when no graph is recorded.

    The same arithmetic as transformers' ``QuickGELUActivation`` (bit-identical); without autograd it needs one
    temporary instead of two, which matters for the MLP's tokens x 3072 activations at 4K. The input (the fc1
    output, owned by nobody else) is overwritten in that case.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_graph(x):
            return x * torch.sigmoid(_QUICK_GELU_SLOPE * x)
        gate = torch.mul(x, _QUICK_GELU_SLOPE).sigmoid_()
        return x.mul_(gate)


#: Query rows per block of the half-precision CPU attention are chosen so that one block's scores
#: (batch x heads x rows x tokens) stay under this many elements (32 MB in bf16; 171 rows at 4K). The fastest
#: of 2**22 .. 2**26 on a 4K pair on a 2-core AVX-512 machine.
_ATTENTION_BLOCK_ELEMENTS = 2**24


class _AfineAttention(CLIPAttention):
    """CLIP attention (same parameters); in bf16 on CPU without autograd, blocked matmul-softmax-matmul.

    Why: torch's CPU flash-attention kernel is several times slower in bf16 than bf16 GEMMs on CPUs without
    AMX, and at 3840x2160 it dominated each layer. Three plain ops reach the GEMM rate: scores = (q * scale) @ k^T
    and softmax(scores) @ v per block of query rows, the softmax in place in a reused scores buffer, so
    memory stays bounded (a 4K image's 8161 x 8161 x 12 scores never exist at once). The scores are rounded
    to bf16 as in transformers' eager bf16 attention. Everything else (fp32, GPUs, training, masks,
    another ``attn_implementation``) runs the stock module unchanged, so fp32 numbers are untouched.
    """

    def _blocked(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> bool:
        return (
            hidden_states.dtype == torch.bfloat16
            and attention_mask is None
            and self.q_proj.bias is not None
            and not self.training
            and self.config._attn_implementation in (None, "sdpa", "eager")
            and _plain_cpu_inference(hidden_states, self.q_proj.weight)
        )

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if kwargs.get("output_attentions") or not self._blocked(hidden_states, attention_mask):
            return super().forward(hidden_states, attention_mask, **kwargs)
        batch, tokens, _ = hidden_states.shape
        heads, head_dim = self.num_heads, self.head_dim
        split = (batch, tokens, heads, head_dim)
        # [B, H, N, d]; the scale multiplies q_proj's accumulator (for d = 64 the scale is a power of two, so
        # this is bit-identical to scaling the rounded q), and q is made contiguous for the GEMM; k^T as a view.
        flat = hidden_states.reshape(batch * tokens, -1)
        queries = torch.addmm(self.q_proj.bias, flat, self.q_proj.weight.t(), beta=self.scale, alpha=self.scale)
        queries = queries.view(split).transpose(1, 2).contiguous()
        keys = self.k_proj(hidden_states).view(split).transpose(1, 2).contiguous().transpose(2, 3)
        values = self.v_proj(hidden_states).view(split).transpose(1, 2).contiguous()
        rows = max(1, min(tokens, _ATTENTION_BLOCK_ELEMENTS // (batch * heads * tokens)))
        scores = queries.new_empty(batch, heads, rows, tokens)
        out = queries.new_empty(batch, tokens, heads, head_dim)
        for start in range(0, tokens, rows):
            block = queries[:, :, start : start + rows]
            s = scores[:, :, : block.shape[2]]
            torch.matmul(block, keys, out=s)
            torch.softmax(s, dim=-1, out=s)
            out[:, start : start + block.shape[2]] = torch.matmul(s, values).transpose(1, 2)
        return self.out_proj(out.view(batch, tokens, heads * head_dim)), None


#: Token rows per chunk of the bf16 CPU MLP: a chunk's tokens x 3072 activations (1.5 MB) stay in cache.
_MLP_CHUNK_ROWS = 256


class _AfineMLP(CLIPMLP):
    """CLIP's MLP (same parameters); in bf16 on CPU without autograd, run over chunks of token rows.

    Why: fc1 -> quick_gelu -> fc2 over all tokens at once sends the tokens x 3072 activations through memory
    three times for the activation alone; per chunk of rows they stay in cache. With CLIP's quick_gelu,
    h * sigmoid(1.702 h) = silu(1.702 h) / 1.702: the factor 1.702 scales fc1's fp32 accumulator and 1 / 1.702
    fc2's, so the activation is one fused pass instead of three (rounding differs from the stock bf16 MLP by
    about an ulp and is no further from fp32). Other dtypes and devices run the stock module unchanged.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            hidden_states.dtype != torch.bfloat16
            or self.fc1.bias is None
            or self.fc2.bias is None
            or not _plain_cpu_inference(hidden_states, self.fc1.weight)
        ):
            return super().forward(hidden_states)
        rows = hidden_states.shape[:-1].numel()
        flat = hidden_states.reshape(rows, hidden_states.shape[-1])
        out = flat.new_empty(rows, self.fc2.out_features)
        fc1_t, fc2_t = self.fc1.weight.t(), self.fc2.weight.t()
        quick_gelu = isinstance(self.activation_fn, _QuickGELU)
        for start in range(0, rows, _MLP_CHUNK_ROWS):
            chunk, stop = flat[start : start + _MLP_CHUNK_ROWS], start + _MLP_CHUNK_ROWS
            if quick_gelu:
                inner = torch.addmm(self.fc1.bias, chunk, fc1_t, beta=_QUICK_GELU_SLOPE, alpha=_QUICK_GELU_SLOPE)
                F.silu(inner, inplace=True)
                torch.addmm(self.fc2.bias, inner, fc2_t, alpha=1.0 / _QUICK_GELU_SLOPE, out=out[start:stop])
            else:
                inner = self.activation_fn(torch.addmm(self.fc1.bias, chunk, fc1_t))
                torch.addmm(self.fc2.bias, inner, fc2_t, out=out[start:stop])
        return out.view(*hidden_states.shape[:-1], self.fc2.out_features)


def _release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Block outputs of big images are ~25 MB, below glibc's mmap threshold, so they live on the heap; freed
    between blocks, they fragment it and the resident size would otherwise creep up by one block per layer.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None
#: CPU passes over images of at least this many tokens each (about 2048x2048 and up) trim the heap before every
#: block. Trimming bounds the resident size of big images, but every page it returns is faulted back in by the
#: next block, which slows batches of small images markedly; they are left alone.
_TRIM_TOKENS = 4096


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


def _needs_graph(*tensors: torch.Tensor) -> bool:
    """True when autograd records ops on these tensors (then no in-place shortcuts)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


#: Set to 1 to run transformers' stock CLIP attention, MLP and patch convolution everywhere (read at every call).
STOCK_MODULES_ENV = "AFINE_STOCK_CLIP_MODULES"


def _plain_cpu_inference(*tensors: torch.Tensor) -> bool:
    """True where the bf16 fast paths replace the stock modules: CPU, no graph recorded, no autocast, and not
    switched off with ``AFINE_STOCK_CLIP_MODULES=1``."""
    return (
        tensors[0].device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and not _needs_graph(*tensors)
        and os.environ.get(STOCK_MODULES_ENV, "0") in ("", "0")
    )


def _token_mean_var(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population variance over tokens: ``[B, N, C]`` -> two ``[B, 1, C]``."""
    mean = tokens.mean(1, keepdim=True)
    if _needs_graph(tokens):
        var = ((tokens - mean) ** 2).mean(1, keepdim=True)
    else:
        # The same arithmetic with one temporary instead of two (matters for 4K images).
        var = (tokens - mean).pow_(2).mean(1, keepdim=True)
    return mean, var


def _cross_mean(x: torch.Tensor, y: torch.Tensor, overwrite_x: bool = False) -> torch.Tensor:
    """Per-channel E[x*y] over tokens (``y`` may have batch 1): ``[B, N, C]`` -> ``[B, 1, C]``.

    ``overwrite_x`` lets it reuse ``x``'s memory for the product when no graph is recorded (x is then garbage).
    """
    if overwrite_x and not _needs_graph(x, y) and x.shape == torch.broadcast_shapes(x.shape, y.shape):
        return x.mul_(y).mean(1, keepdim=True)
    return (x * y).mean(1, keepdim=True)


def _pixel_tokens(pixel_values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo CLIP normalisation and flatten to RGB tokens: ``[B, 3, H, W]`` -> ``[B, H*W, 3]`` (about 0..1)."""
    if _needs_graph(pixel_values, mean, std):
        pixels = pixel_values * std + mean
    else:
        pixels = (pixel_values * std).add_(mean)  # same arithmetic, one image-sized temporary fewer
    return pixels.flatten(2).transpose(1, 2)


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
        """u from the image ``[B, 3, H, W]`` (CLIP-normalised) and the 12 block outputs ``[B, N, hidden]``."""
        stats = [_token_mean_var(_pixel_tokens(pixel_values, self.mean, self.std))]
        stats += [_token_mean_var(F.relu(feat)) for feat in features]
        return self.from_statistics([m for m, _ in stats], [v for _, v in stats])

    def from_statistics(self, means: list[torch.Tensor], variances: list[torch.Tensor]) -> torch.Tensor:
        """u from the per-layer token statistics the head consumes, shape ``[B]``.

        Args:
            means, variances: 13 entries each, ``[B, 1, C_k]``: per-channel token mean and population variance
                of the de-normalised RGB pixels (k = 0) and of ReLU(block k output) (k = 1..12).
        """
        pieces = [torch.cat([means[0].flatten(1), variances[0].flatten(1)], dim=1)]
        for mean, var in zip(means[1:], variances[1:]):
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
        """D from the two images ``[B, 3, H, W]`` and their 12 block outputs ``[B, N, hidden]`` (y may have batch 1)."""
        xs = [_pixel_tokens(x_pixels, self.mean, self.std)] + [F.relu(f) for f in x_features]
        ys = [_pixel_tokens(y_pixels, self.mean, self.std)] + [F.relu(f) for f in y_features]
        x_stats = [_token_mean_var(x) for x in xs]
        y_stats = [_token_mean_var(y) for y in ys]
        cross = [_cross_mean(x, y) for x, y in zip(xs, ys)]
        return self.from_statistics(
            [m for m, _ in x_stats], [v for _, v in x_stats], [m for m, _ in y_stats], [v for _, v in y_stats], cross
        )

    def from_statistics(
        self,
        x_means: list[torch.Tensor],
        x_variances: list[torch.Tensor],
        y_means: list[torch.Tensor],
        y_variances: list[torch.Tensor],
        cross_means: list[torch.Tensor],
    ) -> torch.Tensor:
        """D from per-layer token statistics, shape ``[B]``.

        Every argument has 13 entries ``[B or 1, 1, C_k]`` (k = 0: de-normalised RGB pixels, k >= 1: ReLU of
        block k): per-channel means and population variances of x and y, and E[x*y] over tokens.
        """
        alphas, betas = self.layer_weights()
        c1 = c2 = self.eps
        dist1 = 0.0
        dist2 = 0.0
        for alpha, beta, x_mean, x_var, y_mean, y_var, xy_mean in zip(
            alphas, betas, x_means, x_variances, y_means, y_variances, cross_means
        ):
            s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
            # Uncentered covariance E[xy] - E[x]E[y], exactly as the release computes it.
            cov = xy_mean - x_mean * y_mean
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


#: The five numbers users read from an :class:`AfineOutput` (all lower is better), in the order the tools print them.
SCORE_FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


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

    It holds only what scoring against it needs: the fidelity head's E[x*y] terms need the reference's
    pixels and block outputs token by token; everything else is reduced to per-channel statistics.

    Attributes:
        pixel_values: the stretched, normalised reference ``[R, 3, H', W']`` (R = 1 or the batch size).
        features: the 12 CLIP block outputs without CLS, each ``[R, H'W'/32^2, hidden]``, in the backbone's
            dtype (the heads cast them to fp32, exactly as for a full call).
        naturalness: calibrated N_ref ``[R]``.
        naturalness_raw: raw u_ref ``[R]``.
        image_size: ``(H, W)`` of the reference before the stretch.
        token_means, token_variances: 13 entries each, ``[R, 1, C_k]``: per-channel token mean and population
            variance of the de-normalised RGB pixels (k = 0) and of ReLU(block k) (k = 1..12), as the fidelity
            head computes them. Recomputed from ``pixel_values`` and ``features`` when absent.
    """

    pixel_values: Optional[torch.Tensor] = None
    features: Optional[tuple[torch.Tensor, ...]] = None
    naturalness: Optional[torch.Tensor] = None
    naturalness_raw: Optional[torch.Tensor] = None
    image_size: Optional[tuple[int, int]] = None
    token_means: Optional[tuple[torch.Tensor, ...]] = None
    token_variances: Optional[tuple[torch.Tensor, ...]] = None


#: Above this many tokens (distorted + reference, CLS included) the two images of a pair go through the
#: backbone in two lockstep passes instead of one concatenated pass, which halves the largest temporaries
#: (the MLP's tokens x 3072 activations). A 3840x2160 pair has 2 x 8161 tokens; 512x512 batches stay joint.
_MAX_JOINT_TOKENS = 8192


class _TokenStats:
    """Per-layer token statistics of one image batch, filled one layer at a time (k = 0 is the RGB layer)."""

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []

    def add(self, tokens: torch.Tensor) -> None:
        mean, var = _token_mean_var(tokens)
        self.means.append(mean)
        self.variances.append(var)


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
        if config.vision_config.hidden_act == "quick_gelu":
            for layer in self.vision_model.encoder.layers:
                layer.mlp.activation_fn = _QuickGELU()
        for layer in self.vision_model.encoder.layers:
            # The same modules and parameters with faster bf16 CPU forwards; nothing is re-initialised.
            layer.self_attn.__class__ = _AfineAttention
            layer.mlp.__class__ = _AfineMLP
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

    def _no_autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, enabled=False)

    def _block_outputs(self, pixel_values: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the embeddings, then the CLIP blocks' outputs ``[B, 1 + N, hidden]`` (CLS first), one at a time.

        The same computation as ``vision_model(..., output_hidden_states=True).hidden_states``, but only one
        block's output is alive at a time, so the caller can reduce it before the next one exists. The first
        ``next()`` runs the patch embedding and drops the pixels (without autograd), so callers can prime several
        passes before running their blocks. Gradient checkpointing applies per block as in the stock encoder.
        """
        vision = self.vision_model
        patch = self.config.vision_config.patch_size
        tokens_per_image = 1 + (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        trim = tokens_per_image >= _TRIM_TOKENS and pixel_values.device.type == "cpu"
        if trim:  # the image-sized temporaries of the RGB statistics are gone by now
            _release_free_heap()
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        del pixel_values  # the caller no longer holds it: freed here unless autograd keeps it
        yield hidden
        for layer in vision.encoder.layers:
            if trim:  # the caller has reduced and dropped the previous output by now
                _release_free_heap()
            hidden = layer(hidden, None)
            yield hidden

    def is_big_image(self, size: tuple[int, int]) -> bool:
        """True for images of at least ``_TRIM_TOKENS`` tokens (about 2048x2048 and up) at stretched ``size`` (H, W).

        For these the memory of a pass, not its compute, is what limits scoring: the forward runs the two images of
        a pair in lockstep and hands the heap back between blocks, and :class:`AfineScorer` passes a shared
        reference with each batch instead of keeping its 12 block outputs in an encoding.
        """
        return self._num_tokens(tuple(size)) >= _TRIM_TOKENS

    def _num_tokens(self, size: tuple[int, int]) -> int:
        """Tokens per image (CLS included) for a stretched ``size``; the patch conv drops any remainder."""
        patch = self.config.vision_config.patch_size
        return 1 + (size[0] // patch) * (size[1] // patch)

    def _relu_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """ReLU of a block output without CLS, in the heads' dtype (the tokens both heads consume)."""
        return F.relu(hidden[:, 1:].to(self._head_dtype()))

    def _rgb_tokens(self, head: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return _pixel_tokens(pixels.to(self._head_dtype()), head.mean, head.std)

    def _heads_share_rgb_tokens(self) -> bool:
        n, f = self.natural_head, self.fidelity_head
        return torch.equal(n.mean, f.mean) and torch.equal(n.std, f.std)

    def _natural_rgb_stats(self, pixels: torch.Tensor, fidelity_stats: _TokenStats, shared: bool) -> _TokenStats:
        """The naturalness head's RGB-layer statistics (those of the fidelity head when the buffers agree)."""
        stats = _TokenStats()
        if shared:
            stats.means.append(fidelity_stats.means[0])
            stats.variances.append(fidelity_stats.variances[0])
        else:
            stats.add(self._rgb_tokens(self.natural_head, pixels))
        return stats

    def _calibrated_naturalness(self, stats: _TokenStats) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.natural_head.from_statistics(stats.means, stats.variances)
        return self.natural_calibration(raw), raw

    def _prepare(self, pixel_values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return stretch_to_multiple(pixel_values, self.config.size_multiple, size=size)

    # ---------------------------------------------------------------- public API

    def naturalness(self, images: torch.Tensor) -> AfineNaturalnessOutput:
        """No-reference path: calibrated and raw naturalness of ``images`` ``[B, 3, H, W]`` (lower is better)."""
        self._check_pixels(images, "images")
        size = target_size(*images.shape[-2:], self.config.size_multiple)
        pixels = self._prepare(images, size)
        stats = _TokenStats()
        with self._no_autocast(pixels.device):
            stats.add(self._rgb_tokens(self.natural_head, pixels))
        device = pixels.device
        blocks = self._block_outputs(pixels)
        del pixels  # the generator drops it after the patch embedding
        next(blocks)  # the embeddings
        for hidden in blocks:
            with self._no_autocast(device):
                stats.add(self._relu_tokens(hidden))
            del hidden
        with self._no_autocast(device):
            n, raw = self._calibrated_naturalness(stats)
        return AfineNaturalnessOutput(naturalness=n, naturalness_raw=raw)

    def encode_reference(self, reference: torch.Tensor) -> AfineReferenceEncoding:
        """Encode reference image(s) ``[R, 3, H, W]`` once; pass the result as ``reference_encoding``.

        Keeps the stretched pixels and the 12 block outputs (needed token by token for E[x*y]) plus the
        reference's per-layer statistics and naturalness; nothing else.
        """
        self._check_pixels(reference, "reference")
        image_size = tuple(int(s) for s in reference.shape[-2:])
        pixels = self._prepare(reference, target_size(*image_size, self.config.size_multiple))
        stats = _TokenStats()
        with self._no_autocast(pixels.device):
            stats.add(self._rgb_tokens(self.fidelity_head, pixels))
            natural = self._natural_rgb_stats(pixels, stats, self._heads_share_rgb_tokens())
        features = []
        blocks = self._block_outputs(pixels)
        next(blocks)  # the embeddings
        for hidden in blocks:
            features.append(hidden[:, 1:])
            with self._no_autocast(pixels.device):
                stats.add(self._relu_tokens(hidden))
            natural.means.append(stats.means[-1])
            natural.variances.append(stats.variances[-1])
            del hidden
        with self._no_autocast(pixels.device):
            n, raw = self._calibrated_naturalness(natural)
        return AfineReferenceEncoding(
            pixel_values=pixels,
            features=tuple(features),
            naturalness=n,
            naturalness_raw=raw,
            image_size=image_size,
            token_means=tuple(stats.means),
            token_variances=tuple(stats.variances),
        )

    def forward(
        self,
        distorted: torch.Tensor,
        reference: Optional[torch.Tensor] = None,
        reference_encoding: Optional[AfineReferenceEncoding] = None,
        return_dict: Optional[bool] = None,
    ) -> AfineOutput | tuple:
        """Score ``distorted`` against ``reference``. Lower is better for every output.

        The backbone's block outputs are reduced to the statistics the heads consume as soon as each block has
        run, so memory does not grow with the number of blocks (a 3840x2160 pair fits in well under 1.5 GB).

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
        if reference is None and reference_encoding is None:
            raise ValueError(
                "no reference given: the forward scores distorted images against a reference (pass exactly one of "
                "`reference` or `reference_encoding`); for the no-reference case use model.naturalness(images), "
                'e.g. model.naturalness(processor(images=x)["distorted"])'
            )
        if reference is not None and reference_encoding is not None:
            raise ValueError("pass exactly one of `reference` or `reference_encoding`, not both")
        batch = distorted.shape[0]
        image_size = tuple(int(s) for s in distorted.shape[-2:])
        size = target_size(*image_size, self.config.size_multiple)
        device = distorted.device
        no_autocast = self._no_autocast(device)

        if reference is not None:
            self._check_pixels(reference, "reference")
            ref_size = tuple(int(s) for s in reference.shape[-2:])
            if ref_size != image_size:
                raise ValueError(
                    f"distorted images are {format_size(image_size[1], image_size[0])} but the reference is "
                    f"{format_size(ref_size[1], ref_size[0])}; A-FINE compares images of the same size "
                    "(AfineImageProcessor(resize_reference=True) stretches the reference to the distorted size)"
                )
            if reference.shape[0] not in (1, batch):
                raise ValueError(f"reference batch must be 1 or {batch}, got {reference.shape[0]}")
        else:
            enc = reference_encoding
            if enc.image_size is not None and tuple(enc.image_size) != image_size:
                raise ValueError(
                    f"distorted images are {format_size(image_size[1], image_size[0])} but the reference encoding "
                    f"was made from a {format_size(enc.image_size[1], enc.image_size[0])} image"
                )
            if enc.pixel_values.shape[0] not in (1, batch):
                raise ValueError(f"reference encoding batch must be 1 or {batch}, got {enc.pixel_values.shape[0]}")

        dis_stats, ref_stats, cross = _TokenStats(), _TokenStats(), []
        shared = self._heads_share_rgb_tokens()
        joint = reference is not None and reference.shape[0] == batch
        joint = joint and 2 * batch * self._num_tokens(size) <= _MAX_JOINT_TOKENS
        # Layer k = 0 (the RGB pixels) first, then the patch embeddings. Big inputs take one image batch at a
        # time and start its backbone pass at once, so at most one stretched input and one token copy coexist.
        dis_pixels = self._prepare(distorted, size)
        with no_autocast:
            x = self._rgb_tokens(self.fidelity_head, dis_pixels)
            dis_stats.add(x)
            dis_natural = self._natural_rgb_stats(dis_pixels, dis_stats, shared)
        dis_blocks = ref_blocks = None
        if not joint:
            # Big inputs or a broadcast reference: separate passes in lockstep, half the transient memory of one.
            dis_blocks = self._block_outputs(dis_pixels)
            del dis_pixels
            next(dis_blocks)  # the patch embedding; the stretched input is dropped
        ref_pixels = self._prepare(reference, size) if reference is not None else enc.pixel_values
        with no_autocast:
            y = self._rgb_tokens(self.fidelity_head, ref_pixels)
            cross.append(_cross_mean(x, y, overwrite_x=True))
            del x
            if reference is not None:
                ref_stats.add(y)
            del y
            ref_natural = self._natural_rgb_stats(ref_pixels, ref_stats, shared) if reference is not None else None
        if joint:
            # Small inputs: one backbone pass over distorted and reference together.
            dis_blocks = self._block_outputs(torch.cat([dis_pixels, ref_pixels.to(dis_pixels.dtype)], dim=0))
            del dis_pixels, ref_pixels
            next(dis_blocks)
        elif reference is not None:
            ref_blocks = self._block_outputs(ref_pixels)
            del ref_pixels
            next(ref_blocks)
        else:
            del ref_pixels  # the encoding keeps it

        # Blocks 1..12, reduced to statistics as they come; at most one block output per pass is alive.
        # (Plain next() calls: zip/enumerate would keep the previous outputs referenced one block longer.)
        for k in range(self.config.num_feature_layers):
            x_hidden = next(dis_blocks)
            if joint:
                x_hidden, y_hidden = x_hidden[:batch], x_hidden[batch:]
            else:
                y_hidden = next(ref_blocks) if ref_blocks is not None else None
            with no_autocast:
                x = self._relu_tokens(x_hidden)
                dis_stats.add(x)
                if y_hidden is None:  # the reference encoding holds the block outputs and their statistics
                    y = F.relu(enc.features[k].to(self._head_dtype()))
                else:
                    y = self._relu_tokens(y_hidden)
                    ref_stats.add(y)
                cross.append(_cross_mean(x, y, overwrite_x=True))
            del x, y, x_hidden, y_hidden
        del dis_blocks, ref_blocks

        with no_autocast:
            for stats, natural in ((dis_stats, dis_natural), (ref_stats, ref_natural)):
                if natural is not None:
                    natural.means += stats.means[1:]
                    natural.variances += stats.variances[1:]
            natural_dis, natural_dis_raw = self._calibrated_naturalness(dis_natural)
            if reference is not None:
                natural_ref, natural_ref_raw = self._calibrated_naturalness(ref_natural)
                y_means, y_vars = ref_stats.means, ref_stats.variances
            else:
                natural_ref, natural_ref_raw = enc.naturalness, enc.naturalness_raw
                y_means, y_vars = self._encoding_statistics(enc)
            fidelity_raw = self.fidelity_head.from_statistics(dis_stats.means, dis_stats.variances, y_means, y_vars, cross)
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

    def _encoding_statistics(self, enc: AfineReferenceEncoding) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The reference's per-layer means and variances, from the encoding or recomputed from its tensors."""
        if enc.token_means is not None and enc.token_variances is not None:
            return list(enc.token_means), list(enc.token_variances)
        stats = _TokenStats()
        stats.add(self._rgb_tokens(self.fidelity_head, enc.pixel_values))
        for feat in enc.features:
            stats.add(F.relu(feat.to(self._head_dtype())))
        return stats.means, stats.variances

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
