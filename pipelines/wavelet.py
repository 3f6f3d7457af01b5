"""Wavelet colour fix (as used after every enhancement in the official code).

Both images are split by a 5-level à-trous decomposition (3x3 kernel ``[1,2,1]^T [1,2,1] / 16``
with dilation 1, 2, 4, 8, 16 and replicate padding). The result is the *content*'s high band plus the
*style*'s low band, clamped to [0, 1]: it keeps the generated details and the input's colours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["wavelet_blur", "wavelet_decomposition", "wavelet_color_fix"]

_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """Blur ``(B, C, H, W)`` with the dilated 3x3 kernel, replicate padding of ``dilation`` px."""
    c = image.shape[1]
    kernel = _KERNEL.to(image.device, image.dtype)[None, None].repeat(c, 1, 1, 1)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=dilation)


def wavelet_decomposition(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(high, low)`` with ``high + low == image``; ``low`` is the image blurred ``levels``
    times with dilations ``1, 2, ..., 2**(levels-1)``."""
    high = torch.zeros_like(image)
    for i in range(levels):
        low = wavelet_blur(image, 2**i)
        high = high + (image - low)
        image = low
    return high, image


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Colour-correct ``content`` (the enhanced image) towards ``style`` (the input).

    Both ``(B, 3, H, W)`` or ``(3, H, W)`` floats in [0, 1] of equal size. Returns the same shape,
    in [0, 1].
    """
    if content.shape != style.shape:
        raise ValueError(f"content {tuple(content.shape)} and style {tuple(style.shape)} must have the same shape")
    squeeze = content.dim() == 3
    if squeeze:
        content, style = content[None], style[None]
    high, _ = wavelet_decomposition(content, levels)
    _, low = wavelet_decomposition(style, levels)
    out = (high + low).clamp(0, 1)
    return out[0] if squeeze else out
