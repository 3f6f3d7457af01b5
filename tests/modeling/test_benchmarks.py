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
    res = bench_scoring.main(["--quick", "--skip-big", "--skip-help", "--skip-cli", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"].keys() == res["rows"].keys()
    machine = saved["machine"]
    assert machine["torch_threads"] >= 1 and "avx512_bf16" in machine["isa"] and "amx_bf16" in machine["isa"]
    assert machine["date"].endswith("UTC") and machine["torch_build"]["settings"]["TORCH_VERSION"]
    assert any("threads" in k for k in machine["torch_build"]["threads"])
    rows = saved["rows"]
    # Three interleaved rounds: each row has one sample per round; speed-ups are per round, against that round.
    base = rows[bench_scoring.BASELINE]["samples"]
    for name in ("AfineScorer, fp32", "model forward + processor, bf16", "AfineScorer, fp32, PNG files, num_workers=0"):
        row = rows[name]
        assert len(row["samples"]) == 3
        ratios = sorted(b / t for b, t in zip(base, row["samples"]))
        assert row["speedup"] == {"median": ratios[1], "min": ratios[0], "max": ratios[2]}
        assert row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
    # The user path and the model's forward reproduce the official computation in fp32; bf16 is close.
    assert rows["AfineScorer, fp32"]["max_abs_dscore_vs_baseline"] < 1e-4
    assert rows["model forward + processor, fp32"]["max_abs_dscore_vs_baseline"] < 1e-4
    assert rows["AfineScorer, fp32, PNG files"]["max_abs_dscore_vs_baseline"] < 1e-4  # PNG round trip is lossless
    assert 0 <= rows["AfineScorer, bf16"]["max_abs_dscore_vs_fp32"] < 5
    checks = saved["checks"]
    ratio = checks["scorer / model forward, fp32"]
    scorer, forward = rows["AfineScorer, fp32"]["samples"], rows["model forward + processor, fp32"]["samples"]
    assert ratio["median"] == sorted(s / f for s, f in zip(scorer, forward))[1]
    assert ratio["ok"] == (ratio["median"] <= 1.10)
    assert sum(k.startswith("default decoding threads") for k in checks) == 2
    for name in ("AfineScorer, fp32", "bf16, stock CLIP modules (model forward)"):
        assert rows[name]["of_floor_with_softmax"] > rows[name]["of_floor"] > 0
    assert rows["softmax bf16"]["seconds"]["median"] > 0


def test_bench_scoring_needs_three_rounds():
    with pytest.raises(SystemExit):
        bench_scoring.main(["--tiny", "--repeats", "2", "--skip-big", "--skip-help", "--skip-cli"])


def test_bench_scoring_times_the_cli_inside_its_process(tmp_path):
    """The CLI child prints its scoring time (the scorer's iter_pairs) apart from the process's wall time."""
    import numpy as np
    from PIL import Image

    from bench_big_image import build_model

    build_model(None, "fp32", tiny=True).save_pretrained(tmp_path / "model")
    for name, seed in (("d.png", 0), ("r.png", 1)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    res = bench_scoring.run_cli([str(tmp_path / "d.png"), str(tmp_path / "r.png"), "--model", str(tmp_path / "model"), "-q"])
    assert res["exit_code"] == 0
    assert 0 < res["scoring_seconds"] < res["wall_seconds"] and res["before_scoring_seconds"] > 0
    with pytest.raises(RuntimeError, match="missing.png"):
        bench_scoring.run_cli([str(tmp_path / "missing.png"), str(tmp_path / "r.png"), "--model", str(tmp_path / "model")])


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
