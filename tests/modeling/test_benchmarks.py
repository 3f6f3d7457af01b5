"""The benchmark scripts themselves: FLOP accounting, ordering flips, and quick in-process smoke runs (tiny model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_scoring  # noqa: E402
import bf16_deviation  # noqa: E402
import device_check  # noqa: E402


def test_backbone_flops_match_the_vit_formula():
    """3840x2160 -> 68x120 patches + CLS = 8161 tokens, about 3.8 TFLOP per image for ViT-B/32."""
    from modeling_afine import AfineConfig

    vc = AfineConfig().vision_config
    L, d, ff, layers = 8161, 768, 3072, 12
    expected = layers * (2 * L * d * (4 * d + 2 * ff) + 4 * L * L * d) + 2 * (L - 1) * 3 * 32 * 32 * d
    gemms = bench_scoring.backbone_gemms(vc, bench_scoring.tokens_for((2160, 3840), 32), 1)
    got = bench_scoring.gemm_flops(gemms)
    assert {g[3] for g in gemms} == {"patch", "proj", "attn"}
    assert got == pytest.approx(expected, rel=1e-12)
    assert 3.7e12 < got < 3.9e12
    # Query blocking does not change the count, and images scale it linearly.
    small = bench_scoring.backbone_gemms(vc, 257, 3, query_block=100)
    assert bench_scoring.gemm_flops(small) == pytest.approx(3 * bench_scoring.gemm_flops(bench_scoring.backbone_gemms(vc, 257, 1)))


def test_ordering_flips_counted_only_above_margin():
    base = [10.0, 10.05, 20.0, 30.0]
    other = [10.1, 10.0, 31.0, 30.5]  # (0,1) flips but is within the margin; (2,3) flips above it
    out = bf16_deviation.orderings(base, other, margin=0.1, groups_of=[0, 0, 1, 1])
    assert out["all"] == {"pairs_considered": 5, "flipped": 1}
    assert out["within_reference"] == {"pairs_considered": 1, "flipped": 1}


def test_degradations_change_the_image():
    photo = bf16_deviation._square(bf16_deviation.Image.new("RGB", (80, 50), (120, 60, 30)), 32)
    assert photo.size == (32, 32)
    import numpy as np

    for kind, values in bf16_deviation.DEGRADATIONS.items():
        out = bf16_deviation.degrade(photo, kind, values[-1], seed=0)
        assert out.size == photo.size and out.mode == "RGB"
        if kind == "noise":
            assert np.abs(np.asarray(out, float) - np.asarray(photo, float)).mean() > 5


def test_bench_scoring_smoke(tmp_path):
    out = tmp_path / "b.json"
    res = bench_scoring.main(["--tiny", "--n", "3", "--size", "40", "72", "--batch", "2", "--repeats", "1",
                              "--skip-big", "--skip-help", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"].keys() == res["rows"].keys()
    assert saved["machine"]["torch_threads"] >= 1 and "avx512_bf16" in saved["machine"]["isa"]
    rows = saved["rows"]
    # Reference reuse in fp32 reproduces the official-style computation; bf16 is close but not equal.
    assert rows["ours fp32 (reuse)"]["max_abs_dscore_vs_baseline"] < 1e-4
    assert 0 <= rows["ours bf16 (reuse)"]["max_abs_dscore_vs_fp32"] < 5
    assert all(r["seconds"] > 0 for r in rows.values())
    # The softmax-inclusive bound adds the measured softmax time to the GEMM floor.
    for name in ("ours fp32 (reuse)", "ours bf16 (reuse)", "bf16, stock CLIP modules"):
        assert rows[name]["of_floor_with_softmax"] > rows[name]["of_floor"] > 0
    assert rows["GEMM floor bf16"]["softmax_seconds"] > 0


def test_softmax_time_scales_with_the_score_count(monkeypatch):
    """One timed block, scaled by rows and layers: the count of scores, not the block size, sets the total."""
    from modeling_afine import AfineConfig

    vc = AfineConfig(vision_config=dict(num_hidden_layers=3, num_attention_heads=2)).vision_config
    monkeypatch.setattr(bench_scoring, "_best_seconds", lambda fn, repeats, device: (fn(), 1.0)[1])
    import modeling_afine.modeling_afine as afine_modeling

    monkeypatch.setattr(afine_modeling, "_ATTENTION_BLOCK_ELEMENTS", 2 * 2 * 100 * 25)  # blocks of 25 query rows
    assert bench_scoring.softmax_seconds(vc, 100, 2, torch.bfloat16, torch.device("cpu")) == pytest.approx(3 * 100 / 25)


def test_device_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "d.json"
    res = device_check.main(["--device", "cpu", "--tiny", "--repeats", "1", "--batches", "1", "2", "--skip-big",
                             "--skip-enhancer", "--out", str(out)])
    assert json.loads(out.read_text())["table"] == res["table"]
    assert max(res["afine_fp32"].values()) == 0.0  # same device, same numbers
    assert res["afine_bf16"]["all_finite"] and res["afine_bf16"]["heads_fp32"]
    combos = {(r["dtype"], r["batch"]) for r in res["table"] if r["mode"] == "reuse"}
    assert combos == {(d, b) for d in ("fp32", "bf16", "fp16") for b in (1, 2)}
    assert all(r["of_floor"] > 0 for r in res["table"] if r["mode"] == "reuse")


def test_bf16_deviation_smoke(tmp_path):
    out = tmp_path / "dev.json"
    res = bf16_deviation.main(["--tiny", "--size", "48", "--max-references", "2", "--out", str(out)])
    assert res["pairs"] == 18 and res["references"] == 2
    dev = res["by_dtype"]["bf16"]
    assert 0 < dev["max_abs_dscore"] < 10 and dev["orderings"]["all"]["pairs_considered"] > 0
    assert json.loads(out.read_text())["by_dtype"]["bf16"]["worst_pair"] == dev["worst_pair"]
