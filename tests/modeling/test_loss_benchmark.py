"""benchmarks/bench_loss.py in its quick mode: the rows run, and AfineLoss agrees with the official-style loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_loss  # noqa: E402


def test_bench_loss_quick_rows_agree_and_keep_less_for_backward(tmp_path):
    report = bench_loss.main(["--quick", "--no-rss", "--sizes", "64", "--dtypes", "fp32", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == set(bench_loss.KINDS)
    official = rows["official-style"]
    for kind in ("AfineLoss", "AfineLoss+ckpt"):
        # an independent computation (all block outputs kept, both images in one pass) gives the same loss
        assert rows[kind]["loss"] == pytest.approx(official["loss"], abs=1e-4)
        assert rows[kind]["saved_mb"] < official["saved_mb"]
    assert rows["AfineLoss+ckpt"]["saved_mb"] < rows["AfineLoss"]["saved_mb"]
    assert (tmp_path / "b.json").is_file()
