"""Weak degradation pieces against closed forms and independent computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipelines.degradations import (
    WeakDegradation,
    add_gaussian_noise,
    add_poisson_noise,
    bivariate_kernel,
    circular_lowpass_kernel,
    filter2d,
    gt_only_downsample,
    jpeg_compress,
    random_augment,
)


def _img(h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (img + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def test_kernels_match_closed_forms():
    k = bivariate_kernel("gaussian", 7, 1.1, 1.1, 0.3)
    ax = np.arange(-3, 4)
    ref = np.exp(-(ax[None] ** 2 + ax[:, None] ** 2) / (2 * 1.1**2))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-10)
    # anisotropic: rotating by pi/2 swaps the axes
    a = bivariate_kernel("gaussian", 9, 0.5, 1.5, 0.0)
    b = bivariate_kernel("gaussian", 9, 1.5, 0.5, math.pi / 2)
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert a[0, 4] > 1e3 * a[4, 0]  # theta 0: narrow along x (sig_x 0.5, columns), wide along y (rows)
    p = bivariate_kernel("plateau", 5, 1.0, 1.0, 0.0, beta=0.5)
    q = ax[1:-1][None] ** 2 + ax[1:-1][:, None] ** 2
    ref = 1 / (np.power(q.astype(float), 0.5) + 1)
    np.testing.assert_allclose(p, ref / ref.sum(), rtol=1e-10)
    gg = bivariate_kernel("generalized", 5, 1.0, 1.0, 0.0, beta=1.0)
    np.testing.assert_allclose(gg, bivariate_kernel("gaussian", 5, 1.0, 1.0, 0.0), rtol=1e-12)


def test_sinc_kernel_against_scipy_bessel():
    special = pytest.importorskip("scipy.special")
    size, cutoff = 7, 2.0
    k = circular_lowpass_kernel(cutoff, size, pad_to=9)
    assert k.shape == (9, 9) and abs(k.sum() - 1) < 1e-12 and np.all(k[0] == 0)
    c = 3
    ref = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            r = math.hypot(x - c, y - c)
            ref[y, x] = cutoff**2 / (4 * math.pi) if r == 0 else cutoff * special.j1(cutoff * r) / (2 * math.pi * r)
    np.testing.assert_allclose(k[1:-1, 1:-1], ref / ref.sum(), rtol=1e-6, atol=1e-9)


def test_filter2d_identity_and_box():
    img = _img()
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    torch.testing.assert_close(filter2d(img, delta), img)
    box = np.full((3, 3), 1 / 9)
    out = filter2d(img, box)
    manual = sum(img[..., 1 + dy : 47 + dy, 1 + dx : 39 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    torch.testing.assert_close(out[..., 1:-1, 1:-1], manual, rtol=1e-5, atol=1e-6)
    # reflect padding at the border: row 0 uses rows 1, 0, 1
    col = img[..., :3, 1:-1]
    top = (2 * col[..., 1, :] + col[..., 0, :]).unsqueeze(-2)
    top = (top[..., :-2] + top[..., 1:-1] + top[..., 2:]) / 9
    torch.testing.assert_close(out[..., 0:1, 2:-2], top[..., :], rtol=1e-5, atol=1e-6)


def test_noise_statistics():
    img = torch.full((1, 3, 128, 128), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = add_gaussian_noise(img, 10.0, gray=False, generator=g)
    assert abs((noisy - img).std().item() - 10 / 255) < 0.002
    gray = add_gaussian_noise(img, 10.0, gray=True, generator=g)
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    pois = add_poisson_noise(_img(64, 64), 0.5, gray=False, generator=g)
    assert abs((pois - _img(64, 64)).mean().item()) < 0.01 and (pois - _img(64, 64)).abs().max() > 0
    assert pois.min() >= 0 and pois.max() <= 1


def test_jpeg_quality_orders_error():
    img = _img(64, 64)
    err = [float((jpeg_compress(img, q) - img).abs().mean()) for q in (20, 60, 95)]
    assert err[0] > err[1] > err[2] > 0 and err[2] < 0.03


def test_gt_only_downsample():
    const = torch.full((1, 3, 32, 48), 0.3)
    for mode in ("area", "bilinear", "bicubic"):
        out = gt_only_downsample(const, 1.37, mode)
        assert out.shape == const.shape
        torch.testing.assert_close(out, const, rtol=0, atol=1e-6)
    img = _img(64, 64)
    # downsample size is int(H // s): 64 // 1.5 = 42
    small = torch.nn.functional.interpolate(img, size=(42, 42), mode="bilinear", align_corners=False)
    ref = torch.nn.functional.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(gt_only_downsample(img, 1.5, "bilinear"), ref)


def test_random_augment_matches_explicit_ops():
    img = _img(16, 24)
    rng = np.random.default_rng(3)
    out, p = random_augment(img, rng)
    ref = img
    if p["hflip"]:
        ref = torch.flip(ref, [-1])
    if p["vflip"]:
        ref = torch.flip(ref, [-2])
    if p["transpose"]:
        ref = ref.permute(0, 1, 3, 2)
    torch.testing.assert_close(out, ref)


def test_weak_degradation_seeded_and_recorded():
    deg = WeakDegradation()
    img = _img(64, 64)
    a = deg(img, np.random.default_rng(5))
    b = deg(img, np.random.default_rng(5))
    c = deg(img, np.random.default_rng(6))
    torch.testing.assert_close(a.lq, b.lq, rtol=0, atol=0)
    assert a.params == b.params and a.params != c.params
    assert a.lq.shape == img.shape and a.gt_only_downsample.shape == img.shape
    assert a.lq.min() >= 0 and a.lq.max() <= 1
    torch.testing.assert_close(a.lq * 255, (a.lq * 255).round(), rtol=0, atol=1e-4)
    json.dumps(a.params)
    assert 1 <= a.params["scale_final"] <= 1.5
    # weak: the degraded image stays close to the GT
    assert (a.lq - img).abs().mean() < 0.1
    # the GT-only blur uses the same scale
    ref = gt_only_downsample(img, a.params["scale_final"], a.params["gt_only_downsample_mode"])
    torch.testing.assert_close(a.gt_only_downsample, ref)
    aug = deg(img, np.random.default_rng(5), augment=True)
    assert "augment" in aug.params


def test_kernel_draw_frequencies():
    deg = WeakDegradation()
    rng = np.random.default_rng(0)
    n = 1500
    draws = [deg.sample_kernels(rng) for _ in range(n)]
    sinc = np.mean([d[2]["kernel"]["type"] == "sinc" for d in draws])
    final = np.mean([d[2]["final_sinc"] is not None for d in draws])
    iso = np.mean([d[2]["kernel"]["type"] == "iso" for d in draws])
    assert 0.07 < sinc < 0.13 and 0.07 < final < 0.13 and 0.36 < iso < 0.45
    assert {d[2]["kernel"]["size"] for d in draws} == {3, 5, 7, 9}
    for k, s, _ in draws[:50]:
        assert k.shape == (9, 9) and abs(k.sum() - 1) < 1e-9 and abs(s.sum() - 1) < 1e-9
