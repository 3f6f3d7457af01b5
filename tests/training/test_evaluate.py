"""Benchmark evaluation on synthetic SRIQA-Bench / DiffIQA / KADID folders with a tiny converted model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets.conftest import make_classic, make_diffiqa, make_sriqa
from training.evaluate import main


def _hand_2afc(s1, s2, g) -> float:
    ok = 0
    for a, b, y in zip(s1, s2, g):
        ok += (a < b and y == 1) or (a > b and y == 0) or (a == b and y == 0.5)
    return ok / len(g)


def _cache(path: Path) -> dict:
    lines = path.read_text().splitlines()
    out = {}
    for line in lines[1:]:
        r = json.loads(line)
        out[(r["distorted"], r["reference"])] = r
    return out


@pytest.fixture(scope="module")
def sriqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("SRIQA-Bench")
    make_sriqa(root, size=(32, 32))
    return root


def _sriqa_pairs(root: Path, folder: str):
    """All C(n,2) pairs of every MOS file, read directly from the text files (spec §3.4)."""
    out = []
    for f in sorted((root / folder).glob("*.txt")):
        rows = [line.split(",") for line in f.read_text().splitlines() if line.strip()]
        group = f.stem
        ref = root / "images" / "Original" / f"{group}_Original.png"
        for (n1, m1), (n2, m2) in itertools.combinations([(n, float(m)) for n, m in rows], 2):
            def path(n):
                token = n[len(group) + 1 : -4]
                return root / "images" / ("Original" if token == "Original" else token[:-2]) / n
            g = 1.0 if m1 > m2 else 0.0 if m1 < m2 else 0.5
            out.append((str(path(n1)), str(path(n2)), str(ref), g))
    return out


def test_sriqa_2afc_matches_independent_computation_and_resumes(tmp_path, sriqa, converted_model, hf_cache, capsys):
    out = tmp_path / "res.json"
    argv = ["--model", str(converted_model), "--dataset", "sriqa_bench", "--data-dir", str(sriqa), "--output", str(out),
            "--cache-dir", str(hf_cache), "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "Overall" in table and "Reg" in table and "Gen" in table
    report = json.loads(out.read_text())
    cache_path = tmp_path / "res.scores.jsonl"
    cache = _cache(cache_path)
    # 3 groups x (1 + 4) images, each scored once against its Original
    assert len(cache) == 15 and report["scored"] == 15
    for folder, name in (("MOS", "Overall"), ("MOS_Reg", "Reg"), ("MOS_Gen", "Gen")):
        pairs = _sriqa_pairs(sriqa, folder)
        s1 = [cache[(a, r)]["score_raw"] for a, _, r, _ in pairs]
        s2 = [cache[(b, r)]["score_raw"] for _, b, r, _ in pairs]
        g = [p[3] for p in pairs]
        assert report["results"][name]["n"] == len(pairs)
        assert report["results"][name]["2afc"] == pytest.approx(_hand_2afc(s1, s2, g), abs=1e-12)
    assert report["results"]["Overall"]["n"] == 30

    # the cached scores are the model's outputs
    from modeling_afine import AfineImageProcessor, AfineModel

    model = AfineModel.from_pretrained(str(converted_model)).eval()
    proc = AfineImageProcessor.from_pretrained(str(converted_model))
    (dis, ref), rec = next(iter(cache.items()))
    with torch.no_grad():
        inputs = proc(distorted=dis, reference=ref)
        direct = model(**inputs)
    assert rec["score_raw"] == pytest.approx(float(direct.score_raw[0]), rel=1e-5, abs=1e-6)

    # resume: drop the last 4 cached pairs (and leave a torn line): only those are scored again
    lines = cache_path.read_text().splitlines()
    cache_path.write_text("\n".join(lines[:-4]) + "\n" + lines[-4][:10])
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert again["scored"] == 4
    assert again["results"] == report["results"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["scored"] == 0


def test_cache_of_another_model_is_refused(tmp_path, sriqa, converted_model, hf_cache, capsys):
    cache = tmp_path / "c.jsonl"
    cache.write_text(json.dumps({"model": "/some/other/model"}) + "\n")
    rc = main(["--model", str(converted_model), "--dataset", "sriqa_bench", "--data-dir", str(sriqa), "--cache", str(cache),
               "--cache-dir", str(hf_cache), "--no-progress", "--config", "pairs_Reg"])
    assert rc == 1
    assert str(cache) in capsys.readouterr().err


def test_diffiqa_per_type(tmp_path, converted_model, hf_cache):
    import dataset_scripts

    root = tmp_path / "DiffIQA"
    make_diffiqa(root, size=(32, 32))
    out = tmp_path / "d.json"
    assert main(["--model", str(converted_model), "--dataset", "diffiqa", "--data-dir", str(root), "--output", str(out),
                 "--cache-dir", str(hf_cache), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["PSY", "PNY", "SNY", "PYY", "NYY"]
    cache = _cache(tmp_path / "d.scores.jsonl")
    for t in ("PSY", "PNY", "SNY", "PYY", "NYY"):
        ds = dataset_scripts.load("diffiqa", root, name=t, split="test", cache_dir=hf_cache)
        import datasets

        ds = ds.cast_column("img1", datasets.Image(decode=False)).cast_column("img2", datasets.Image(decode=False))
        ds = ds.cast_column("ref", datasets.Image(decode=False))
        s1 = [cache[(r["img1"]["path"], r["ref"]["path"])]["score_raw"] for r in ds]
        s2 = [cache[(r["img2"]["path"], r["ref"]["path"])]["score_raw"] for r in ds]
        got = report["results"][t]
        assert got["n"] == len(ds)
        if len(ds):
            assert got["2afc"] == pytest.approx(_hand_2afc(s1, s2, list(ds["g12"])), abs=1e-12)


def test_mos_correlations(tmp_path, converted_model, hf_cache):
    from scipy import stats

    root = tmp_path / "KADID"
    truth = make_classic(root, "kadid10k", size=(32, 32), n_dist=6)
    out = tmp_path / "k.json"
    assert main(["--model", str(converted_model), "--dataset", "kadid10k", "--data-dir", str(root), "--config", "mos",
                 "--output", str(out), "--cache-dir", str(hf_cache), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    cache = _cache(tmp_path / "k.scores.jsonl")
    rows = [r for stem, rs in truth["Test"].items() for r in rs]
    s = [cache[(str(root / "images" / d), str(root / "images" / ref))]["score_raw"] for d, ref, _, _ in rows]
    m = [r[2] for r in rows]
    res = report["results"]["mos"]
    assert res["n"] == len(rows)
    # A-FINE is lower = better: the reported correlations are sign-corrected
    assert res["srcc"] == pytest.approx(-stats.spearmanr(s, m).statistic, abs=1e-6)  # MOS is stored as float32
    assert res["plcc"] == pytest.approx(-np.corrcoef(s, m)[0, 1], abs=1e-6)


def test_usage_errors(tmp_path, converted_model, capsys):
    assert main(["--model", str(converted_model)]) == 2
    assert main(["--model", str(converted_model), "--dataset", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert main(["--model", str(converted_model), "--dataset", "sriqa_bench", "--data-dir", str(tmp_path / "nope"),
                 "--no-progress"]) == 1
    assert "nope" in capsys.readouterr().err


class _FakeScorer:
    """Deterministic scores from the file names; counts the pairs it scored (thread-safe enough for lists)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def score(self, distorted, reference, resize_reference=False):
        import types
        import zlib

        from training.evaluate import SCORE_FIELDS

        self.seen += [(str(d), str(reference)) for d in distorted]
        vals = torch.tensor([zlib.crc32(f"{d}|{reference}".encode()) / 2**32 for d in distorted], dtype=torch.float64)
        return types.SimpleNamespace(**{f: vals + i for i, f in enumerate(SCORE_FIELDS)})


def _run_ranks(world, pairs, cache, scorer):
    import threading

    from training.evaluate import score_pairs_sharded

    barrier = threading.Barrier(world)
    errors, totals = [], {}

    def run(rank):
        try:
            totals[rank] = score_pairs_sharded(scorer, pairs, cache, "model-x", rank=rank, world=world,
                                               barrier=barrier.wait, chunk=2)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return totals


def test_sharded_scoring_merges_parts_in_input_order_and_resumes_with_another_world_size(tmp_path):
    from training.evaluate import ScoreCache, part_files, score_pairs

    pairs = [(f"d{i}.png", f"r{i % 3}.png") for i in range(11)] + [("d4.png", "r1.png")]  # one duplicate
    reference = tmp_path / "single.jsonl"
    score_pairs(_FakeScorer(), pairs, ScoreCache(reference, "model-x"))
    ref_lines = reference.read_text().splitlines()

    cache = tmp_path / "sharded.jsonl"
    scorer = _FakeScorer()
    totals = _run_ranks(2, pairs, cache, scorer)
    assert totals == {0: 11, 1: 11} and len(scorer.seen) == 11
    assert not part_files(cache) and not (tmp_path / "sharded.jsonl.parts").exists()
    # merged in the input order of the pairs, with the single-process values
    got = [json.loads(x) for x in cache.read_text().splitlines()[1:]]
    assert [(Path(r["distorted"]).name, Path(r["reference"]).name) for r in got] == pairs[:11]
    by_key = {(r["distorted"], r["reference"]): r for r in map(json.loads, ref_lines[1:])}
    assert {(r["distorted"], r["reference"]): r for r in got} == by_key

    # an interrupted 3-process run left a part file (with a torn last line) and a partial cache: 2 processes finish
    cache2 = tmp_path / "resumed.jsonl"
    cache2.write_text("\n".join(ref_lines[:3]) + "\n")
    (tmp_path / "resumed.jsonl.parts").mkdir()
    (tmp_path / "resumed.jsonl.parts" / "rank-00002-of-00003.jsonl").write_text(
        ref_lines[0] + "\n" + ref_lines[6] + "\n" + ref_lines[9] + "\n" + ref_lines[10][:20])
    (tmp_path / "resumed.jsonl.part1-of-3").write_text(ref_lines[0] + "\n" + ref_lines[7] + "\n")  # older naming
    scorer2 = _FakeScorer()
    _run_ranks(2, pairs, cache2, scorer2)
    assert len(scorer2.seen) == 11 - 2 - 2 - 1  # two rows in the cache, two + one complete rows in the parts
    final = {(r["distorted"], r["reference"]): r for r in map(json.loads, cache2.read_text().splitlines()[1:])}
    assert final == by_key and not part_files(cache2)


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path, converted_model, hf_cache):
    """accelerate launch on 2 CPU processes: the shards are merged into the same cache and report."""
    import os
    import socket
    import subprocess
    import sys

    root = tmp_path / "PIPAL"
    make_classic(root, "pipal", size=(32, 32))
    common = ["--model", str(converted_model), "--dataset", "pipal", "--data-dir", str(root), "--cache-dir",
              str(hf_cache), "--no-progress"]
    assert main(common + ["--output", str(tmp_path / "one.json")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "training.evaluate"] + common + [
           "--output", str(tmp_path / "two.json")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["scored"] == one["scored"] > 0
    assert two["results"].keys() == one["results"].keys()
    for view, metrics in one["results"].items():  # other batch compositions: float rounding only
        assert two["results"][view] == {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-5, abs=1e-6)
                                        for k, v in metrics.items()}
    a, b = _cache(tmp_path / "two.scores.jsonl"), _cache(tmp_path / "one.scores.jsonl")
    assert a.keys() == b.keys()
    for key in a:  # other batch compositions: float rounding only
        assert {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in a[key].items()} == b[key]
    assert not list(tmp_path.glob("two.scores.jsonl.part*"))  # neither the parts folder nor older part files
