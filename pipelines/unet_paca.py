"""The PASD UNet: a Stable Diffusion UNet with pixel-aware cross-attention (PACA) in its up path.

Every up block gets ``pixel_attentions``: one stock :class:`~diffusers.Transformer2DModel` per resnet
(3 per block for SD-1.5, 12 in total). After resnet ``j`` (and, in cross-attention blocks, after the
text transformer) the hidden state attends to the ControlNet residual that belongs to the skip
connection that layer consumed; the residual map is flattened ``(B, C, H, W) -> (B, H*W, C)`` and used
as keys/values, so the key/value width equals that skip's channel count. The ControlNet residuals are
also added to the skips as in a plain ControlNet UNet.

Parameter names (``up_blocks.{i}.pixel_attentions.{j}.…``) are those of the released A-FINE
enhancer checkpoint, so its ``unet/`` folder loads with :meth:`from_pretrained`.

This module must not import ``modeling_afine``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import torch
from torch import nn

from diffusers import UNet2DConditionModel
# ``ModelMixin`` must be a name of this module: when a saved pipeline lists the UNet as
# ["pipelines.unet_paca", "PASDUNet2DConditionModel"], diffusers looks up its loadable base classes
# (ModelMixin, ...) in this module to find the loading method.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_blocks import CrossAttnUpBlock2D, UpBlock2D

__all__ = ["PASDUNet2DConditionModel", "PixelAwareKwargs", "PACA_PREFIX", "is_paca_key"]

logger = logging.getLogger(__name__)

PACA_PREFIX = "pixel_attentions"


def is_paca_key(name: str) -> bool:
    """True for a state-dict key (or parameter name) that belongs to a PACA block."""
    return f".{PACA_PREFIX}." in f".{name}"


def _flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)`` (the ``b c h w -> b (h w) c`` rearrange of the original)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


class PixelAwareKwargs(dict):
    """``cross_attention_kwargs`` that also carry the PACA inputs of one forward call.

    :meth:`PASDUNet2DConditionModel.forward` wraps the caller's ``cross_attention_kwargs`` in this
    dict subclass and hands it to the stock UNet forward, which passes it on to every up block as an
    argument. The PACA maps are an attribute, not a key, so the attention processors of the other
    blocks never see them. Nothing is stored on the modules, so concurrent and nested calls of one
    UNet do not interfere.

    ``pixel_states`` maps each up block to its ControlNet residual maps in skip order (a tuple of
    ``(B, C, H, W)`` tensors), or to ``None`` for "no ControlNet" (the PACA blocks then attend to zero
    maps, what a freshly initialised ControlNet produces).
    """

    def __init__(self, kwargs: dict[str, Any] | None, pixel_states: dict[nn.Module, tuple[torch.Tensor, ...] | None]):
        super().__init__(kwargs or {})
        self.pixel_states = pixel_states

    def copy(self) -> "PixelAwareKwargs":
        # diffusers copies cross_attention_kwargs (e.g. to pop the LoRA "scale"); keep the maps.
        return PixelAwareKwargs(dict(self), self.pixel_states)


class _PixelAwareMixin:
    """Up-block forward with PACA; the residual maps arrive in ``cross_attention_kwargs``
    (a :class:`PixelAwareKwargs`)."""

    def _run_layers(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None,
        cross_attention_kwargs: dict[str, Any] | None,
        text_attention=None,
    ) -> torch.Tensor:
        if not isinstance(cross_attention_kwargs, PixelAwareKwargs) or self not in cross_attention_kwargs.pixel_states:
            raise RuntimeError(
                f"{type(self).__name__} needs its ControlNet maps: call it through PASDUNet2DConditionModel.forward"
            )
        pixel_states = cross_attention_kwargs.pixel_states[self]
        attention_kwargs = dict(cross_attention_kwargs)
        ckpt = torch.is_grad_enabled() and self.gradient_checkpointing
        attentions = self.attentions if text_attention is not None else [None] * len(self.resnets)
        for j, (resnet, attn) in enumerate(zip(self.resnets, attentions)):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            if pixel_states is None:
                pixel_map = torch.zeros_like(res_hidden_states)
            else:
                pixel_map = pixel_states[-1]
                pixel_states = pixel_states[:-1]
            hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)
            if ckpt:
                hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, temb)
            else:
                hidden_states = resnet(hidden_states, temb)
            if attn is not None:
                hidden_states = text_attention(attn, hidden_states, attention_kwargs)
            hidden_states = self.pixel_attentions[j](
                hidden_states,
                encoder_hidden_states=_flatten_tokens(pixel_map.to(hidden_states.dtype)),
                cross_attention_kwargs=attention_kwargs,
                return_dict=False,
            )[0]
        return hidden_states


class PASDCrossAttnUpBlock2D(_PixelAwareMixin, CrossAttnUpBlock2D):
    """:class:`CrossAttnUpBlock2D` with PACA after each (resnet, text transformer) pair."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: int | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def text_attention(attn, h, attention_kwargs):
            return attn(
                h,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
                return_dict=False,
            )[0]

        hidden_states = self._run_layers(hidden_states, res_hidden_states_tuple, temb, cross_attention_kwargs, text_attention)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class PASDUpBlock2D(_PixelAwareMixin, UpBlock2D):
    """:class:`UpBlock2D` (no text attention) with PACA after each resnet."""

    # Makes the stock UNet forward pass ``cross_attention_kwargs`` (carrying the PACA maps) to this block.
    has_cross_attention = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: int | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self._run_layers(hidden_states, res_hidden_states_tuple, temb, cross_attention_kwargs)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


_PASD_BLOCKS = {CrossAttnUpBlock2D: PASDCrossAttnUpBlock2D, UpBlock2D: PASDUpBlock2D}


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class PASDUNet2DConditionModel(UNet2DConditionModel):
    """SD UNet + 12 pixel-aware cross-attention blocks (for the SD-1.5 layout).

    Same constructor/config as :class:`~diffusers.UNet2DConditionModel` (the signature is the
    parent's, so ``from_config``/``from_pretrained`` keep every key). Only the up block types
    ``UpBlock2D`` and ``CrossAttnUpBlock2D`` are supported.

    Forward: as the parent, with ControlNet residuals in ``down_block_additional_residuals`` (one per
    skip) and ``mid_block_additional_residual``. Pass both or neither; with neither the PACA blocks
    attend to zero maps and nothing is added to the skips. ``sample``: ``(B, 4, h, w)`` latents;
    returns the predicted noise of the same shape.
    """

    @functools.wraps(UNet2DConditionModel.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach_pixel_attentions()

    def _attach_pixel_attentions(self) -> None:
        cfg = self.config
        n_blocks = len(cfg.block_out_channels)
        heads = cfg.num_attention_heads or cfg.attention_head_dim
        heads = list(reversed(_per_block(heads, n_blocks)))
        layers = cfg.transformer_layers_per_block
        if cfg.reverse_transformer_layers_per_block is not None:
            layers = list(cfg.reverse_transformer_layers_per_block)
        else:
            layers = list(reversed(_per_block(layers, n_blocks)))
        only_cross = list(reversed(_per_block(cfg.only_cross_attention, n_blocks)))
        for i, block in enumerate(self.up_blocks):
            new_cls = _PASD_BLOCKS.get(type(block))
            if new_cls is None:
                raise ValueError(
                    f"PASDUNet2DConditionModel supports only UpBlock2D/CrossAttnUpBlock2D up blocks, got "
                    f"{type(block).__name__} at up_blocks.{i}"
                )
            # The PASD block classes add no state of their own, so switching the class of the
            # already built stock block keeps its parameters (and their names) unchanged.
            block.__class__ = new_cls
            out_ch = block.resnets[0].out_channels
            n_layers = len(block.resnets)
            tl = _per_block(layers[i], n_layers)
            paca, paca_args = [], []
            for j in range(n_layers):
                # Key/value width = channels of the skip this layer consumes. The official UpBlock2D
                # used ``out_channels`` for all its layers: the same number for SD-1.5 (1280/1280),
                # but a crash for configurations whose last two widths differ.
                skip_ch = self._skip_width(i, j)
                args = dict(
                    num_attention_heads=heads[i],
                    attention_head_dim=out_ch // heads[i],
                    in_channels=out_ch,
                    num_layers=tl[j],
                    cross_attention_dim=skip_ch,
                    norm_num_groups=cfg.norm_num_groups,
                    use_linear_projection=cfg.use_linear_projection,
                    only_cross_attention=only_cross[i],
                    upcast_attention=cfg.upcast_attention,
                )
                paca_args.append(args)
                paca.append(Transformer2DModel(**args))
            block.pixel_attentions = nn.ModuleList(paca)
            block._paca_args = paca_args

    def _skip_width(self, i: int, j: int) -> int:
        """Channels of the skip consumed by layer ``j`` of up block ``i`` (computed from the config)."""
        chans = list(self.config.block_out_channels)
        rev = list(reversed(chans))
        n_layers = len(self.up_blocks[i].resnets)
        out_ch = rev[i]
        in_ch = rev[min(i + 1, len(chans) - 1)]
        return in_ch if j == n_layers - 1 else out_ch

    # ------------------------------------------------------------------ helpers
    @property
    def paca_modules(self) -> list[Transformer2DModel]:
        """All PACA blocks in up-block order."""
        return [m for block in self.up_blocks for m in block.pixel_attentions]

    def paca_parameters(self):
        """Iterator over the PACA parameters (the trainable part of the UNet)."""
        for block in self.up_blocks:
            yield from block.pixel_attentions.parameters()

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> "PASDUNet2DConditionModel":
        """Build from a stock SD UNet: same config and weights, freshly initialised PACA blocks."""
        model = cls.from_config(unet.config)
        model.load_stock_state_dict(unet.state_dict())
        return model.to(device=unet.device, dtype=unet.dtype)

    def load_stock_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a stock UNet state dict; everything but the PACA weights must be present.

        Raises ``ValueError`` if a non-PACA key is missing or the dict has unexpected keys.
        """
        result = self.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not is_paca_key(k)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"state dict does not fit the UNet: missing non-PACA keys {missing[:5]}"
                f"{'…' if len(missing) > 5 else ''}, unexpected keys {result.unexpected_keys[:5]}"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As :meth:`ModelMixin.from_pretrained`; also loads a *stock* SD UNet (e.g. ``subfolder="unet"``
        of SD-1.5), giving the PACA blocks a fresh default initialisation.

        diffusers 0.42 builds models without initialising them and leaves weights missing from the
        checkpoint uninitialised (garbage memory) or, with ``low_cpu_mem_usage=True``, on the meta
        device; here such PACA blocks are re-created. A missing non-PACA weight raises ``ValueError``.
        """
        want_info = kwargs.pop("output_loading_info", False)
        # diffusers would list every PACA key as "newly initialized"; summarise it below instead
        quiet = logging.getLogger("diffusers.models.modeling_utils")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        finally:
            quiet.setLevel(level)
        missing = list(info.get("missing_keys", []))
        other = [k for k in missing if not is_paca_key(k)]
        if other:
            raise ValueError(
                f"{pretrained_model_name_or_path}: the checkpoint lacks {len(other)} non-PACA UNet weights, "
                f"e.g. {other[0]}"
            )
        reset = model.reset_paca_blocks(missing) if missing else []
        if reset:
            logger.warning(
                "%s holds no PACA weights for %d of %d blocks (a stock SD UNet?): they were freshly initialised",
                pretrained_model_name_or_path, len(reset), len(model.paca_modules),
            )
        meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        if meta:
            raise RuntimeError(f"{len(meta)} parameters were left on the meta device (e.g. {meta[0]})")
        return (model, info) if want_info else model

    def reset_paca_blocks(self, keys: Sequence[str] | None = None) -> list[tuple[int, int]]:
        """Give PACA blocks a fresh default initialisation (also materialising meta weights).

        ``keys``: parameter names; only blocks owning one of them are reset (``None``: all blocks).
        Returns the ``(up_block, layer)`` indices that were reset.
        """
        targets = set()
        for i, block in enumerate(self.up_blocks):
            for j in range(len(block.pixel_attentions)):
                prefix = f"up_blocks.{i}.{PACA_PREFIX}.{j}."
                if keys is None or any(k.startswith(prefix) for k in keys):
                    targets.add((i, j))
        ref = next((p for p in self.parameters() if p.device.type != "meta"), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        for i, j in sorted(targets):
            block = self.up_blocks[i]
            fresh = Transformer2DModel(**block._paca_args[j])
            state = {k: v.to(device=device, dtype=dtype) for k, v in fresh.state_dict().items()}
            block.pixel_attentions[j].load_state_dict(state, assign=True)
        return sorted(targets)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ):
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise ValueError(
                "pass both down_block_additional_residuals and mid_block_additional_residual (ControlNet "
                "outputs) or neither; with only the first, diffusers would treat them as T2I-adapter residuals"
            )
        if args:
            raise TypeError("pass the optional UNet arguments by keyword")
        residuals = None if down_block_additional_residuals is None else tuple(down_block_additional_residuals)
        pixel_states: dict[nn.Module, tuple[torch.Tensor, ...] | None] = {}
        for block in self.up_blocks:  # as the skips: each up block takes the last maps that are left
            n = len(block.resnets)
            if residuals is None:
                pixel_states[block] = None
            else:
                if len(residuals) < n:
                    raise ValueError("too few down_block_additional_residuals for the UNet's skips")
                pixel_states[block] = residuals[-n:]
                residuals = residuals[:-n]
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            cross_attention_kwargs=PixelAwareKwargs(cross_attention_kwargs, pixel_states),
            **kwargs,
        )
