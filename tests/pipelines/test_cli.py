"""``afine enhancer`` command line (pipelines.cli.main) with the tiny saved pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main

from .conftest import random_image


def test_enhance_writes_outputs_resumes_and_reports_bad_files(tiny_pipe_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    random_image((40, 32), seed=1).save(src / "a.png")
    random_image((32, 32), seed=2).save(src / "b.jpg")
    out = tmp_path / "out"
    args = ["enhance", str(src), "-o", str(out), "--model", str(tiny_pipe_dir), "--steps", "2", "--process-size", "0"]
    assert main(args) == 0
    assert Image.open(out / "a.png").size == (40, 32) and Image.open(out / "b.png").size == (32, 32)
    stamp = (out / "a.png").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "a.png").stat().st_mtime_ns == stamp
    assert "skipping 2" in capsys.readouterr().out
    (src / "c.png").write_bytes(b"broken")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c.png" in err and "Traceback" not in err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["enhance", str(tmp_path / "missing.png"), "-o", str(tmp_path), "--model", "x"]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["enhance"]) == 2
    assert main(["generate-diffiqa", "--references", str(tmp_path / "none"), "-o", str(tmp_path), "--model", "x"]) == 2
    assert main(["nonsense"]) == 2
    assert main(["--help"]) == 0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    random_image((32, 32)).save(tmp_path / "a.png")
    base = ["enhance", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]
    assert main(base + ["--model", str(tmp_path / "nomodel")]) == 2
    assert "model folder not found" in _one_line_error(capsys)
    # the reported case: a relative path (huggingface_hub used to say "Repo id must use alphanumeric chars")
    monkeypatch.chdir(tmp_path)
    assert main(base + ["--model", "./missing-folder"]) == 2
    err = _one_line_error(capsys)
    assert "model folder not found: ./missing-folder" in err and "alphanumeric" not in err
    assert main(base + ["--model", str(tmp_path / "a.png")]) == 2
    assert "is a file" in _one_line_error(capsys)
    (tmp_path / "sd").mkdir()
    assert main(base + ["--model", str(tmp_path / "sd"), "--enhancer", "./no-enhancer"]) == 2
    assert "enhancer (--enhancer) folder not found: ./no-enhancer" in _one_line_error(capsys)
    # an existing folder that is not a model: one line naming it
    assert main(base + ["--model", str(tmp_path / "sd")]) == 2
    assert "could not load the enhancer from --model" in _one_line_error(capsys)


def test_uncached_hub_id_fails_fast_offline(tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    random_image((32, 32)).save(tmp_path / "a.png")
    start = time.monotonic()
    assert main(["enhance", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "someorg/enhancer"]) == 2
    assert time.monotonic() - start < 10
    err = _one_line_error(capsys)
    assert "someorg/enhancer" in err and "HF_HUB_OFFLINE" in err


def test_generate_diffiqa_sharded_and_resumed(tiny_pipe_dir, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        random_image((32, 32), seed=i).save(refs / f"r{i}.png")
    out = tmp_path / "images"
    base = ["generate-diffiqa", "--references", str(refs), "-o", str(out), "--model", str(tiny_pipe_dir),
            "--min-steps", "1", "--max-steps", "2", "--process-size", "0", "--num-variants", "2", "--no-progress"]
    assert main(base + ["--num-shards", "2", "--shard-index", "0", "--max-outputs", "1"]) == 0
    assert len(list(out.glob("0[12]/*.png"))) == 1
    assert main(base + ["--num-shards", "2", "--shard-index", "0"]) == 0
    assert main(base + ["--num-shards", "2", "--shard-index", "1"]) == 0
    assert len(list(out.glob("0[12]/*.png"))) == 6 and len(list(out.glob("Original/*.png"))) == 3
    parts = sorted((out / "manifest.jsonl.parts").glob("rank-*-of-00002.jsonl"))
    recs = [json.loads(line) for f in parts for line in f.read_text().splitlines()]
    assert len(parts) == 2 and sorted(r["file"] for r in recs) == sorted({r["file"] for r in recs}) and len(recs) == 6
    assert main(base + ["--num-shards", "2", "--shard-index", "2"]) == 2


def test_select_and_crop(tmp_path):
    import numpy as np

    src = tmp_path / "full"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(np.repeat(rng.integers(0, 256, (600, 700, 1), dtype=np.uint8), 3, 2)).save(src / "tex.png")
    Image.new("RGB", (600, 700), (100, 100, 100)).save(src / "flat.png")
    assert main(["select-references", str(src), "-o", str(tmp_path / "sel")]) == 0
    assert [p.name for p in (tmp_path / "sel").glob("*.png")] == ["tex.png"]
    assert main(["crop", str(tmp_path / "sel"), "-o", str(tmp_path / "crops")]) == 0
    crops = sorted((tmp_path / "crops").glob("*.png"))
    assert crops and all(p.name.startswith("texx") and Image.open(p).size == (512, 512) for p in crops)
    assert main(["crop", str(tmp_path / "sel"), "-o", str(tmp_path / "crops")]) == 0  # resumes: nothing new
    assert sorted((tmp_path / "crops").glob("*.png")) == crops


def test_generate_diffiqa_takes_its_shard_from_the_launcher_env(tiny_pipe_dir, tmp_path, monkeypatch):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        random_image((32, 32), seed=i).save(refs / f"r{i}.png")
    out = tmp_path / "images"
    base = ["generate-diffiqa", "--references", str(refs), "-o", str(out), "--model", str(tiny_pipe_dir),
            "--min-steps", "1", "--max-steps", "1", "--process-size", "0", "--num-variants", "1", "--no-progress"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # no rendezvous: this worker only takes its share
    assert main(base) == 0
    assert sorted(p.name for p in out.glob("01/*.png")) == ["r1_01.png"]
    part = out / "manifest.jsonl.parts" / "rank-00001-of-00002.jsonl"
    assert [json.loads(x)["file"] for x in part.read_text().splitlines()] == ["01/r1_01.png"]
    assert not (out / "manifest.jsonl").exists()
    # The other share by hand, then one process over the folder: nothing left to do, the parts are merged.
    assert main(base + ["--shard-index", "0", "--num-shards", "2"]) == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert main(base) == 0
    merged = [json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert merged == ["01/r0_01.png", "01/r1_01.png", "01/r2_01.png"]
    assert not (out / "manifest.jsonl.parts").exists()


@pytest.mark.slow
def test_generate_diffiqa_under_torchrun_two_processes(tiny_pipe_dir, tmp_path):
    import os
    import subprocess
    import sys

    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        random_image((32, 32), seed=i).save(refs / f"r{i}.png")
    out = tmp_path / "images"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipelines.cli", "generate-diffiqa", "--references", str(refs), "-o", str(out),
           "--model", str(tiny_pipe_dir), "--min-steps", "1", "--max-steps", "1", "--process-size", "0",
           "--num-variants", "2", "--no-progress"]
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Rank 0 merged both parts into one manifest, in input order (reference, then variant), after a barrier.
    assert not (out / "manifest.jsonl.parts").exists()
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    files = [r["file"] for r in recs]
    assert files == [f"{v:02d}/r{i}_{v:02d}.png" for i in range(3) for v in (1, 2)]  # each output exactly once
    assert {r["worker"] for r in recs} == {0, 1}


def test_generate_diffiqa_two_env_ranks_then_merge_equal_one_process(tiny_pipe_dir, tmp_path, monkeypatch, capsys):
    """Two ranks simulated by the launcher's variables (RANK/WORLD_SIZE, read by modeling_afine.sharding), run one
    after the other, then one process over the folder merges the parts: the same files, byte for byte, and the same
    manifest in input order as a single-process run."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        random_image((32, 32), seed=20 + i).save(refs / f"r{i}.png")

    def run(out: Path) -> int:
        return main(["generate-diffiqa", "--references", str(refs), "-o", str(out), "--model", str(tiny_pipe_dir),
                     "--min-steps", "1", "--max-steps", "1", "--process-size", "0", "--num-variants", "2",
                     "--no-progress"])

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run(single) == 0
    parts = sharded / "manifest.jsonl.parts"
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert run(sharded) == 0
        part = parts / f"rank-{rank:05d}-of-00002.jsonl"
        names = {json.loads(line)["name"] for line in part.read_text().splitlines()}
        assert names == ({"r0", "r2"} if rank == 0 else {"r1"})  # i % 2 == rank of the sorted references
    assert not (sharded / "manifest.jsonl").exists()  # no rendezvous: nobody merges yet
    monkeypatch.setenv("RANK", "2")
    assert run(sharded) == 2 and "RANK=2" in capsys.readouterr().err
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert run(sharded) == 0  # nothing left to generate: merges the parts
    assert not parts.exists()

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.png")}

    assert files(sharded) == files(single) and len(files(single)) == 3 + 3 * 2

    def manifest(root: Path) -> list[dict]:
        recs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "worker")} for r in recs]

    assert manifest(sharded) == manifest(single)
    assert [r["file"] for r in manifest(single)] == [f"{v:02d}/r{i}_{v:02d}.png" for i in range(3) for v in (1, 2)]
