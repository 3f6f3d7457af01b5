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
