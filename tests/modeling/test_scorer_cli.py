"""AfineScorer (mixed sizes, shared references) and the `afine` command line, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from modeling_afine.scoring import AfineScorer, ModelNotAvailableError, load_afine

from .conftest import degrade


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("imgs")
    ref = photos["coffee_70x100"]
    paths = {"ref": d / "ref.png", "big_ref": d / "big_ref.png"}
    Image.fromarray(ref).save(paths["ref"])
    for i, f in enumerate((2, 4)):
        paths[f"dis{i}"] = d / f"dis{i}.png"
        Image.fromarray(degrade(ref, f, noise=3, seed=i)).save(paths[f"dis{i}"])
    big = photos["chelsea_96x160"]
    Image.fromarray(big).save(paths["big_ref"])
    paths["big_dis"] = d / "big_dis.png"
    Image.fromarray(degrade(big, 3)).save(paths["big_dis"])
    paths["broken"] = d / "broken.png"
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return paths


def test_scorer_matches_model(model, processor, files):
    scorer = AfineScorer(model, batch_size=2)
    pairs = [(files["dis0"], files["ref"]), (files["big_dis"], files["big_ref"]), (files["dis1"], files["ref"])]
    out = scorer.score([p[0] for p in pairs], [p[1] for p in pairs])
    for i, (d, r) in enumerate(pairs):
        with torch.no_grad():
            one = model(**processor(d, r))
        for f in ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference"):
            torch.testing.assert_close(getattr(out, f)[i], getattr(one, f)[0], rtol=1e-5, atol=1e-5)
    shared = scorer.score([files["dis0"], files["dis1"]], files["ref"])
    torch.testing.assert_close(shared.score, out.score[[0, 2]], rtol=1e-5, atol=1e-5)
    nat = scorer.naturalness([files["dis0"], files["big_dis"]])
    torch.testing.assert_close(nat, out.naturalness_distorted[:2], rtol=1e-5, atol=1e-5)


def test_load_afine_from_official_pth_is_cached(official_pth, tmp_path, monkeypatch):
    monkeypatch.setenv("AFINE_CACHE", str(tmp_path / "cache"))
    m1, _ = load_afine(official_pth)
    converted = list((tmp_path / "cache" / "converted").iterdir())
    assert len(converted) == 1
    m2, _ = load_afine(official_pth)
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
    assert torch.equal(m1.adapter.k, m2.adapter.k)


def test_default_model_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("AFINE_CACHE", str(tmp_path / "cache"))
    t = time.time()
    with pytest.raises(ModelNotAvailableError, match="afine convert"):
        load_afine(None)
    assert time.time() - t < 10


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "modeling_afine", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_score_json_and_text(converted_dir, files, model, processor):
    res = run_cli("score", files["dis0"], files["dis1"], files["ref"], "--model", converted_dir, "--json", "-q")
    assert res.returncode == 0, res.stderr
    recs = json.loads(res.stdout)
    assert [r["distorted"] for r in recs] == [str(files["dis0"]), str(files["dis1"])]
    with torch.no_grad():
        expected = model(**processor([files["dis0"], files["dis1"]], files["ref"]))
    for r, s in zip(recs, expected.score.tolist()):
        assert abs(r["score"] - s) < 1e-4
        assert set(r) == {"distorted", "reference", "score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference"}
    assert "Traceback" not in res.stderr


def run_inproc(capsys, *args):
    from modeling_afine.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_errors_and_exit_codes(converted_dir, files, tmp_path, capsys):
    code, out, err = run_inproc(capsys, "score", files["broken"], files["ref"], "--model", converted_dir)
    assert code == 1 and "broken.png" in err and "Traceback" not in err
    code, out, err = run_inproc(capsys, "score", files["big_dis"], files["ref"], "--model", converted_dir)
    assert code == 1 and "same size" in err
    code, out, err = run_inproc(capsys, "score", files["big_dis"], files["ref"], "--model", converted_dir, "--resize-reference")
    assert code == 0 and "lower is better" in out and "A-FINE score (0-100)" in out, err
    code, out, err = run_inproc(capsys, "score", files["ref"])
    assert code == 2 and "REFERENCE" in err
    code, out, err = run_inproc(capsys, "score", files["dis0"], files["ref"], "--model", tmp_path / "nothing-here.pth")
    assert code == 2 and "does not exist" in err
    code, out, err = run_inproc(capsys, "frobnicate")
    assert code == 2 and "unknown command" in err
    code, out, err = run_inproc(capsys, "score", files["dis0"], files["ref"], "--model", converted_dir, "--dtype", "int3")
    assert code == 2 and "unknown dtype" in err


def test_cli_offline_default_model(files, tmp_path):
    t = time.time()
    res = run_cli(
        "score", files["dis0"], files["ref"],
        env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "AFINE_CACHE": str(tmp_path / "c")},
    )
    assert res.returncode == 2 and "afine convert" in res.stderr and "Traceback" not in res.stderr
    assert time.time() - t < 60  # includes interpreter start-up and imports


def test_cli_pairs_file_resumes(converted_dir, files, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "distorted,reference\n"
        f"{files['dis0']},{files['ref']}\n{files['broken']},{files['ref']}\n{files['big_dis']},{files['big_ref']}\n"
    )
    out = tmp_path / "scores.jsonl"
    code, _, _ = run_inproc(capsys, "score", "--pairs", pairs, "--output", out, "--model", converted_dir, "-q")
    assert code == 1  # one broken file, the others still scored
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert sum("error" in l for l in lines) == 1 and sum("score" in l for l in lines) == 2
    code, stdout, _ = run_inproc(capsys, "score", "--pairs", pairs, "--output", out, "--model", converted_dir, "-q", "--json")
    assert json.loads(stdout) == []  # the two good pairs were skipped, the broken one failed again
    assert code == 1
    again = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(again) == 3 and sum("error" in l for l in again) == 1  # its new error replaced the old one


def test_iter_scores_reports_bad_files_and_encodes_reference_once(model, files, monkeypatch):
    scorer = AfineScorer(model, batch_size=2)
    calls = []
    original = model.encode_reference
    monkeypatch.setattr(model, "encode_reference", lambda x: calls.append(tuple(x.shape)) or original(x))
    items = [files["dis0"], files["broken"], files["dis1"], files["big_dis"], files["dis0"]]
    got = dict(scorer.iter_scores(items, files["ref"]))
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert isinstance(got[1], Exception) and "broken.png" in str(got[1])
    assert isinstance(got[3], ValueError) and "same size" in str(got[3])  # big_dis vs the small reference
    assert len(calls) == 1  # one encoding for the one size group that matches the reference
    full = scorer.score([files["dis0"], files["dis1"]], files["ref"])
    assert abs(float(got[0]["score"]) - float(full.score[0])) < 1e-5
    assert abs(float(got[4]["score"]) - float(full.score[0])) < 1e-5
    with pytest.raises(Exception, match="broken.png"):
        scorer.score([files["dis0"], files["broken"]], files["ref"])
