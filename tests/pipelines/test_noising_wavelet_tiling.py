"""Closed-form checks: double noising, UniPC configuration, wavelet colour fix, tile geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from pipelines.noising import MAX_INFERENCE_STEPS, ddpm_add_noise, double_noise, make_inference_scheduler
from pipelines.tiling import gaussian_tile_weights, needs_tiling, tile_offsets
from pipelines.wavelet import wavelet_color_fix


def _sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_double_noise_equals_closed_form_and_ddpm():
    acp = make_inference_scheduler().alphas_cumprod
    torch.testing.assert_close(acp.double(), _sd_alphas_cumprod(), rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    x, n1, n2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    for level in (20, 500, 999):
        z = double_noise(x, n1, n2, 999, level, acp)
        a1, a2 = acp[999].double(), acp[level].double()
        closed = (a1 * a2).sqrt() * x.double() + (a2 * (1 - a1)).sqrt() * n1.double() + (1 - a2).sqrt() * n2.double()
        torch.testing.assert_close(z.double(), closed, rtol=1e-5, atol=1e-5)
        ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        twice = ddpm.add_noise(ddpm.add_noise(x, n1, torch.tensor([999])), n2, torch.tensor([level]))
        torch.testing.assert_close(z, twice, rtol=1e-5, atol=1e-5)
    # the weight left on the clean latent, as stated in the spec: 0.068 / 0.036 / 0.013
    zero = torch.zeros(1)
    for level, weight in ((20, 0.068), (500, 0.036), (800, 0.013)):
        w = double_noise(torch.ones(1), zero, zero, 999, level, acp).item()
        assert abs(w - weight) < 0.0015
    with pytest.raises(ValueError):
        ddpm_add_noise(x, n1, 1000, acp)


def test_unipc_config_and_999_step_edge():
    s = make_inference_scheduler({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                  "beta_schedule": "scaled_linear", "steps_offset": 1, "skip_prk_steps": True,
                                  "_class_name": "PNDMScheduler"})
    assert s.config.final_sigmas_type == "sigma_min"
    assert s.config.solver_order == 2 and s.config.predict_x0 and s.config.solver_type == "bh2"
    s.set_timesteps(20)
    assert int(s.timesteps[0]) == 999 and float(s.sigmas[-1]) > 0
    s.set_timesteps(MAX_INFERENCE_STEPS)
    ts = s.timesteps.tolist()
    assert len(ts) == 999 and len(set(ts)) == 999
    # a full 999-step loop with a simple epsilon model stays finite
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in s.timesteps:
        x = s.step(0.5 * x, t, x, return_dict=False)[0]
    assert torch.isfinite(x).all()


def _blur_np(img: np.ndarray, d: int) -> np.ndarray:
    """Independent numpy version of the dilated [1,2,1]x[1,2,1]/16 blur with edge padding."""
    k = np.array([1.0, 2.0, 1.0]) / 4
    p = np.pad(img, ((0, 0), (d, d), (d, d)), mode="edge")
    h, w = img.shape[1:]
    rows = sum(k[i] * p[:, i * d : i * d + h, :] for i in range(3))
    return sum(k[i] * rows[:, :, i * d : i * d + w] for i in range(3))


def test_wavelet_fix_keeps_input_low_frequencies():
    rng = np.random.default_rng(0)
    style = rng.random((3, 40, 48)) * 0.5 + 0.25
    content = np.clip(style + rng.normal(0, 0.05, style.shape) + np.array([0.1, -0.08, 0.05])[:, None, None], 0, 1)
    out = wavelet_color_fix(torch.tensor(content, dtype=torch.float64), torch.tensor(style, dtype=torch.float64)).numpy()

    def low(img):
        for i in range(5):
            img = _blur_np(img, 2**i)
        return img

    expected = np.clip(content - low(content) + low(style), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-10)
    # a pure colour cast (constant offset) is removed exactly
    shifted = style + np.array([0.1, -0.1, 0.05])[:, None, None]
    fixed = wavelet_color_fix(torch.tensor(shifted), torch.tensor(style)).numpy()
    np.testing.assert_allclose(fixed, style, atol=1e-10)
    # the output's low band equals the input's (no clipping here)
    np.testing.assert_allclose(low(out), low(low(style)) + low(content - low(content)), atol=1e-10)
    with pytest.raises(ValueError):
        wavelet_color_fix(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))


def test_tile_offsets_and_weights():
    assert tile_offsets(128, 64, 8) == [0, 56, 64]
    assert tile_offsets(64, 64, 8) == [0]
    assert tile_offsets(16, 8, 2) == [0, 6, 8]
    assert tile_offsets(20, 8, 2) == [0, 6, 12]
    for size, ts, ov in ((128, 64, 8), (37, 8, 3), (100, 16, 0)):
        offs = tile_offsets(size, ts, ov)
        covered = np.zeros(size, bool)
        for o in offs:
            covered[o : o + ts] = True
        assert covered.all() and offs[-1] + ts == size
    assert needs_tiling(128, 128, 64) and not needs_tiling(64, 64, 64) and not needs_tiling(32, 128, 64)
    w = gaussian_tile_weights(4).numpy()
    px = [math.exp(-((i - 1.5) ** 2) / 16 / 0.02) / math.sqrt(2 * math.pi * 0.01) for i in range(4)]
    py = [math.exp(-((i - 2.0) ** 2) / 16 / 0.02) / math.sqrt(2 * math.pi * 0.01) for i in range(4)]
    np.testing.assert_allclose(w, np.outer(py, px), rtol=1e-12)
