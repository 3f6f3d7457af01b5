"""Schedulers and the input-latent "double noising" of the enhancer.

Inference uses UniPC configured to reproduce diffusers 0.21.4 (which the official code ran on):
``final_sigmas_type="sigma_min"`` and at most :data:`MAX_INFERENCE_STEPS` steps (in 0.42, 1000 steps
repeat the timestep 500 and the loop produces NaN; 0.21.4 de-duplicated to 999 steps).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from diffusers import UniPCMultistepScheduler

__all__ = ["MAX_INFERENCE_STEPS", "MAX_NOISE_LEVEL", "make_inference_scheduler", "ddpm_add_noise", "double_noise"]

#: Largest usable number of UniPC steps (see module doc).
MAX_INFERENCE_STEPS = 999
#: Largest DDPM timestep (``alphas_cumprod`` has 1000 entries, 0..999).
MAX_NOISE_LEVEL = 999

#: The SD-1.5 noise schedule (its ``scheduler/scheduler_config.json``), used when no config is given.
SD15_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def make_inference_scheduler(config: Mapping[str, Any] | None = None) -> UniPCMultistepScheduler:
    """UniPC with the noise schedule of ``config`` (e.g. SD-1.5's PNDM scheduler config) and the
    sampler settings the official code ran with.

    Only the schedule keys (betas, number of training steps, prediction type) are taken from
    ``config``; everything else is UniPC's default as in diffusers 0.21.4 loading SD-1.5's config
    (linspace spacing, order 2, bh2, predict-x0, lower-order final) plus
    ``final_sigmas_type="sigma_min"``. A newer config's ``timestep_spacing="leading"`` (PNDM's
    current default) is deliberately not inherited.
    """
    source = SD15_SCHEDULE if config is None else config
    kwargs = {k: source[k] for k in _SCHEDULE_KEYS if k in source and source[k] is not None}
    return UniPCMultistepScheduler(**kwargs, timestep_spacing="linspace", final_sigmas_type="sigma_min")


def ddpm_add_noise(
    x: torch.Tensor, noise: torch.Tensor, timestep: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DDPM forward noising ``sqrt(a_t) x + sqrt(1 - a_t) noise`` with ``a_t = alphas_cumprod[timestep]``.

    ``timestep`` must be in ``[0, len(alphas_cumprod) - 1]``. Computed in float32 and cast back.
    """
    if not 0 <= int(timestep) < len(alphas_cumprod):
        raise ValueError(f"timestep must be in [0, {len(alphas_cumprod) - 1}], got {timestep}")
    a = alphas_cumprod[int(timestep)].to(device=x.device, dtype=torch.float32)
    out = a.sqrt() * x.float() + (1 - a).sqrt() * noise.float()
    return out.to(x.dtype)


def double_noise(
    latents: torch.Tensor,
    first_noise: torch.Tensor,
    second_noise: torch.Tensor,
    first_timestep: int,
    added_noise_level: int,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The official input-latent start: noise to the schedule's first timestep (999 with linspace
    spacing), then noise the result *again* to ``added_noise_level``.

    Reproduced faithfully although it nearly erases the input: the clean latent keeps a weight of
    ``sqrt(a_999 * a_level)`` (0.068 at level 20, 0.013 at level 800).
    """
    z = ddpm_add_noise(latents, first_noise, first_timestep, alphas_cumprod)
    return ddpm_add_noise(z, second_noise, added_noise_level, alphas_cumprod)
