"""An independent, plain-torch implementation of spec/afine.md §1, for tests only.

It works directly on an official-layout state dict (OpenAI CLIP key names, fused attention projection)
and follows the official code path for batch size 1: normalise, stretch, CLIP with the 1-D positional
resampling (implemented here from its formula, not with ``F.interpolate``), heads, calibrations written
with ``1 / (1 + exp(.))`` and the official ``exp_pow >= 10`` branch, adapter, 0-100 mapping.
It shares no code with the package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def random_official_checkpoint(
    seed: int = 0,
    width: int = 128,
    layers: int = 2,
    grid: int = 7,
    patch: int = 32,
    hidden: int = 16,
    mlp: int = 48,
    fidelity_scale: tuple[float, float] = (-0.3, 0.9),
    natural_scale: tuple[float, float] = (0.0, 1.0),
    k: float = 0.3,
    text_tower: bool = True,
) -> dict[str, dict[str, torch.Tensor]]:
    """A random checkpoint in the official ``afine.pth`` layout (6 parts, OpenAI key names).

    Defaults put both fidelity clamps in play (yita3 = -0.3 -> 0.05, yita4 = 0.9 -> 0.70), and scale the
    naturalness head so that N varies between images.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    clip: dict[str, torch.Tensor] = {
        "visual.class_embedding": rnd(width, std=width**-0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, width, std=0.5),
        "visual.proj": rnd(width, 64),
        "visual.conv1.weight": rnd(width, 3, patch, patch, std=0.05),
        "visual.ln_pre.weight": 1 + rnd(width, std=0.1),
        "visual.ln_pre.bias": rnd(width, std=0.1),
        "visual.ln_post.weight": 1 + rnd(width, std=0.1),
        "visual.ln_post.bias": rnd(width, std=0.1),
    }
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        clip[p + "attn.in_proj_weight"] = rnd(3 * width, width, std=0.08)
        clip[p + "attn.in_proj_bias"] = rnd(3 * width, std=0.05)
        clip[p + "attn.out_proj.weight"] = rnd(width, width, std=0.08)
        clip[p + "attn.out_proj.bias"] = rnd(width, std=0.05)
        clip[p + "ln_1.weight"] = 1 + rnd(width, std=0.1)
        clip[p + "ln_1.bias"] = rnd(width, std=0.1)
        clip[p + "mlp.c_fc.weight"] = rnd(4 * width, width, std=0.08)
        clip[p + "mlp.c_fc.bias"] = rnd(4 * width, std=0.05)
        clip[p + "mlp.c_proj.weight"] = rnd(width, 4 * width, std=0.05)
        clip[p + "mlp.c_proj.bias"] = rnd(width, std=0.05)
        clip[p + "ln_2.weight"] = 1 + rnd(width, std=0.1)
        clip[p + "ln_2.bias"] = rnd(width, std=0.1)
    if text_tower:
        clip.update(
            {
                "positional_embedding": rnd(7, 32),
                "text_projection": rnd(32, 32),
                "logit_scale": torch.tensor(4.6),
                "token_embedding.weight": rnd(50, 32),
                "ln_final.weight": torch.ones(32),
                "ln_final.bias": torch.zeros(32),
                "transformer.resblocks.0.attn.in_proj_weight": rnd(96, 32),
                "transformer.resblocks.0.ln_1.weight": torch.ones(32),
            }
        )
    natural = {
        "mean": MEAN.clone(),
        "std": STD.clone(),
        "proj_feat.weight": rnd(hidden, 2 * width, std=0.3),
        "proj_feat.bias": rnd(hidden, std=0.1),
        "proj_head.0.weight": rnd(mlp, 6 + hidden * layers, std=0.3),
        "proj_head.0.bias": rnd(mlp, std=0.1),
        "proj_head.2.weight": rnd(1, mlp, std=0.5),
        "proj_head.2.bias": rnd(1, std=0.1),
    }
    channels = 3 + width * layers
    fidelity = {
        "alpha": rnd(1, 1, channels, std=0.5, mean=0.1),
        "beta": rnd(1, 1, channels, std=0.5, mean=0.1),
        "mean": MEAN.clone(),
        "std": STD.clone(),
    }
    return {
        "finetuned_clip": clip,
        "natural": natural,
        "fidelity": fidelity,
        "natural_scale": {"yita3": torch.tensor(natural_scale[0]), "yita4": torch.tensor(natural_scale[1])},
        "fidelity_scale": {"yita3": torch.tensor(fidelity_scale[0]), "yita4": torch.tensor(fidelity_scale[1])},
        "adapter": {"k": torch.tensor(k)},
    }


# ------------------------------------------------------------------ 1-D positional resampling


def keys_cubic(t: float, a: float = -0.75) -> list[float]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t (Keys kernel)."""

    def w(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [w(1 + t), w(t), w(1 - t), w(2 - t)]


def resample_rows(table: np.ndarray, length: int) -> np.ndarray:
    """Spec §1.2: s = (i + 0.5) * P / L - 0.5 (not clamped), taps f-1..f+2 clamped to [0, P-1]."""
    rows = table.shape[0]
    out = np.zeros((length, table.shape[1]), dtype=np.float64)
    for i in range(length):
        s = (i + 0.5) * rows / length - 0.5
        f = math.floor(s)
        weights = keys_cubic(s - f)
        for off, wgt in zip((-1, 0, 1, 2), weights):
            out[i] += wgt * table[min(max(f + off, 0), rows - 1)]
    return out


# ------------------------------------------------------------------ CLIP visual (OpenAI layout)


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def clip_features(clip: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Official modified VisionTransformer: returns the 12 block outputs without CLS, [B, N, D] each."""
    d = clip["visual.conv1.weight"].shape[0]
    patch = clip["visual.conv1.weight"].shape[-1]
    h = F.conv2d(x, clip["visual.conv1.weight"], stride=patch)
    h = h.reshape(h.shape[0], d, -1).permute(0, 2, 1)
    cls = clip["visual.class_embedding"].expand(h.shape[0], 1, d)
    h = torch.cat([cls, h], dim=1)
    table = clip["visual.positional_embedding"].double().numpy()
    pos = torch.from_numpy(resample_rows(table, h.shape[1])).float()
    h = h + pos
    h = _ln(h, clip["visual.ln_pre.weight"], clip["visual.ln_pre.bias"])
    n_layers = len({k.split(".")[3] for k in clip if k.startswith("visual.transformer.resblocks.")})
    feats = []
    for i in range(n_layers):
        p = f"visual.transformer.resblocks.{i}."
        y = _ln(h, clip[p + "ln_1.weight"], clip[p + "ln_1.bias"])
        qkv = y @ clip[p + "attn.in_proj_weight"].T + clip[p + "attn.in_proj_bias"]
        q, k, v = qkv.split(d, dim=-1)
        b, n, _ = q.shape
        hd = d // heads
        q = q.reshape(b, n, heads, hd).transpose(1, 2)
        k = k.reshape(b, n, heads, hd).transpose(1, 2)
        v = v.reshape(b, n, heads, hd).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, n, d)
        h = h + (o @ clip[p + "attn.out_proj.weight"].T + clip[p + "attn.out_proj.bias"])
        y = _ln(h, clip[p + "ln_2.weight"], clip[p + "ln_2.bias"])
        y = y @ clip[p + "mlp.c_fc.weight"].T + clip[p + "mlp.c_fc.bias"]
        y = y * torch.sigmoid(1.702 * y)  # QuickGELU
        h = h + (y @ clip[p + "mlp.c_proj.weight"].T + clip[p + "mlp.c_proj.bias"])
        feats.append(h[:, 1:, :])
    return feats


# ------------------------------------------------------------------ heads


def _layers(x_norm: torch.Tensor, feats: list[torch.Tensor], mean, std) -> list[torch.Tensor]:
    x = x_norm * std + mean
    return [x.flatten(2).permute(0, 2, 1)] + [F.relu(f) for f in feats]


def natural_raw(p: dict, x: torch.Tensor, feats) -> torch.Tensor:
    pieces = []
    for idx, t in enumerate(_layers(x, feats, p["mean"], p["std"])):
        m = t.mean(1)
        v = ((t - m[:, None]) ** 2).mean(1)
        c = torch.cat([m, v], dim=1)
        if idx:
            c = c @ p["proj_feat.weight"].T + p["proj_feat.bias"]
        pieces.append(c)
    z = torch.cat(pieces, dim=1) @ p["proj_head.0.weight"].T + p["proj_head.0.bias"]
    z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))  # exact GELU
    return (z @ p["proj_head.2.weight"].T + p["proj_head.2.bias"])[:, 0]


def fidelity_raw(p: dict, x, y, fx, fy) -> torch.Tensor:
    lx = _layers(x, fx, p["mean"], p["std"])
    ly = _layers(y, fy, p["mean"], p["std"])
    a = F.softplus(p["alpha"]).flatten()
    b = F.softplus(p["beta"]).flatten()
    total = a.sum() + b.sum() + 1e-10
    a, b = a / total, b / total
    out = torch.ones(x.shape[0])
    start = 0
    for tx, ty in zip(lx, ly):
        c = tx.shape[-1]
        mx, my = tx.mean(1), ty.mean(1)
        vx = ((tx - mx[:, None]) ** 2).mean(1)
        vy = ((ty - my[:, None]) ** 2).mean(1)
        cov = (tx * ty).mean(1) - mx * my
        s1 = (2 * mx * my + 1e-10) / (mx**2 + my**2 + 1e-10)
        s2 = (2 * cov + 1e-10) / (vx + vy + 1e-10)
        out = out - (a[start : start + c] * s1).sum(1) - (b[start : start + c] * s2).sum(1)
        start += c
    return out


def official_logistic(x: float, y1: float, y2: float, y3: float, y4: float) -> float:
    """The official 4-parameter logistic including its batch-1 `exp_pow >= 10` branch (python floats)."""
    e = -(x - y3) / (abs(y4) + 1e-10)
    if e >= 10:
        return (y1 - y2) * math.exp(-e) / (1 + math.exp(-e)) + y2
    return (y1 - y2) / (1 + math.exp(e)) + y2


def reference_afine(parts: dict, dis01: torch.Tensor, ref01: torch.Tensor, heads: int) -> dict[str, float]:
    """Five official outputs for ONE pair given as float RGB tensors [3, H, W] in [0, 1]."""
    dis = ((dis01[None] - MEAN) / STD).clone()
    ref = ((ref01[None] - MEAN) / STD).clone()
    h, w = dis.shape[-2:]
    nh = h if h % 32 == 0 else h + (32 - h % 32)
    nw = w if w % 32 == 0 else w + (32 - w % 32)
    if (nh, nw) != (h, w):
        dis = F.interpolate(dis, size=(nh, nw), mode="bicubic", align_corners=False)
        ref = F.interpolate(ref, size=(nh, nw), mode="bicubic", align_corners=False)
    clip = parts["finetuned_clip"]
    fd = clip_features(clip, dis, heads)
    fr = clip_features(clip, ref, heads)
    u_dis = float(natural_raw(parts["natural"], dis, fd)[0])
    u_ref = float(natural_raw(parts["natural"], ref, fr)[0])
    d = float(fidelity_raw(parts["fidelity"], dis, ref, fd, fr)[0])
    ns, fs = parts["natural_scale"], parts["fidelity_scale"]
    n_dis = official_logistic(u_dis, 2, -2, float(ns["yita3"]), float(ns["yita4"]))
    n_ref = official_logistic(u_ref, 2, -2, float(ns["yita3"]), float(ns["yita4"]))
    c3 = min(max(float(fs["yita3"]), 0.05), 0.95)
    c4 = min(max(float(fs["yita4"]), 0.01), 0.70)
    f = official_logistic(d, 2, -2, c3, c4)
    k = math.log1p(math.exp(float(parts["adapter"]["k"])))
    a = math.exp(k * (n_ref - n_dis)) * n_dis + f
    s = official_logistic(a, 100, 0, -1.9710, -2.3734)
    return {
        "score": s,
        "score_raw": a,
        "fidelity": f,
        "naturalness_distorted": n_dis,
        "naturalness_reference": n_ref,
        "fidelity_raw": d,
        "naturalness_distorted_raw": u_dis,
        "naturalness_reference_raw": u_ref,
    }
