"""`afine score M1_DIR M2_DIR GT_DIR`: pairing by relative path, unmatched files, checks before the model, the
leaderboard in every form, `--pairs` headers and the method column, memory faults, and the Python function."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_afine.scoring import AfineScorer

from .conftest import degrade
from .test_scorer_cli import run_inproc

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


@pytest.fixture(scope="module")
def tree(tmp_path_factory, photos):
    """gt/ with nested paths and two sizes; m1/ (one output saved as .jpg, one extra output without a ground
    truth), m2/ (one output missing), m3/ (outputs named with a suffix)."""
    root = tmp_path_factory.mktemp("folders")
    # at least 128 px a side: below that the tiny model's matrices are so small that the CPU kernels round
    # differently by batch size, and the comparison with the single-pair command would not be exact
    astronaut = photos["astronaut_224"]
    images = {
        "baby": astronaut,
        "sub/bird": astronaut[:128, :192],
        "sub/deep/zebra": astronaut[::-1, ::-1][:160, :160].copy(),
        "comic": np.asarray(Image.fromarray(photos["chelsea_96x160"]).resize((192, 128), Image.BICUBIC)),
    }
    for key, img in images.items():
        (root / "gt" / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "gt" / f"{key}.png")
        for m, factor in (("m1", 2), ("m2", 3), ("m3", 4)):
            if m == "m2" and key == "comic":
                continue  # a missing output
            out = degrade(img, factor, noise=2, seed=factor)
            ext = "jpg" if (m == "m1" and key == "sub/bird") else "png"
            name = f"{key}_SwinIR" if m == "m3" else key
            (root / m / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(out).save(root / m / f"{name}.{ext}", quality=95)
    Image.fromarray(images["baby"]).save(root / "m1" / "extra.png")  # an output without a ground truth
    return root


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def folder_run(tree, converted_dir, tmp_path_factory):
    """One run of `afine score m1 m2 gt -o scores.jsonl --summary board.json`, plus the CSV and Markdown forms."""
    from modeling_afine.cli import main

    out_dir = tmp_path_factory.mktemp("run")
    out = out_dir / "scores.jsonl"
    args = ["score", str(tree / "m1"), str(tree / "m2"), str(tree / "gt"), "--model", str(converted_dir), "-q", "-o", str(out)]
    codes = [main(args + ["--summary", str(out_dir / "board.json")])]
    codes.append(main(args + ["--summary", str(out_dir / "board.csv")]))  # a rerun: everything is skipped
    codes.append(main(args + ["--summary", str(out_dir / "board.md")]))
    return {"codes": codes, "out": out, "dir": out_dir}


def test_folder_pairs_by_relative_path_and_names_unmatched_files(tree, folder_run):
    assert folder_run["codes"] == [0, 0, 0]
    recs = _lines(folder_run["out"])
    scored = [r for r in recs if "score" in r]
    assert all("method" in r for r in recs)
    got = {(r["method"], r["image"]): (os.path.relpath(r["distorted"], tree), os.path.relpath(r["reference"], tree)) for r in scored}
    assert got == {
        ("m1", "baby"): ("m1/baby.png", "gt/baby.png"),
        ("m1", "comic"): ("m1/comic.png", "gt/comic.png"),
        ("m1", "sub/bird"): ("m1/sub/bird.jpg", "gt/sub/bird.png"),  # .jpg output against the .png ground truth
        ("m1", "sub/deep/zebra"): ("m1/sub/deep/zebra.png", "gt/sub/deep/zebra.png"),
        ("m2", "baby"): ("m2/baby.png", "gt/baby.png"),
        ("m2", "sub/bird"): ("m2/sub/bird.png", "gt/sub/bird.png"),
        ("m2", "sub/deep/zebra"): ("m2/sub/deep/zebra.png", "gt/sub/deep/zebra.png"),
    }
    unmatched = [r for r in recs if "unmatched" in r]
    assert [(r["method"], r["distorted"] and os.path.relpath(r["distorted"], tree), r.get("image")) for r in unmatched] == [
        ("m1", "m1/extra.png", None),
        ("m2", None, "comic"),
    ]
    assert len(recs) == 9  # the reruns added nothing


def test_folder_scores_equal_the_single_pair_command(tree, folder_run, converted_dir, capsys):
    for rec in (r for r in _lines(folder_run["out"]) if "score" in r):
        code, out, err = run_inproc(capsys, "score", rec["distorted"], rec["reference"], "--model", converted_dir, "-q", "--json")
        assert code == 0, err
        one = json.loads(out)[0]
        for f in FIELDS:  # fp32: bit for bit, although the folder run encodes each ground truth once for both methods
            assert rec[f] == one[f], (rec["image"], f)


def _independent_stats(recs: list[dict]) -> dict[str, np.ndarray]:
    by_method: dict[str, dict[str, float]] = {}
    for r in recs:
        if "score" in r:
            by_method.setdefault(r["method"], {})[r["image"]] = r["score"]
    common = set.intersection(*(set(v) for v in by_method.values()))
    return {m: np.array([v[k] for k in sorted(common)]) for m, v in by_method.items()}, by_method, common


def test_leaderboard_csv_and_json_against_numpy_and_scipy(folder_run):
    from scipy.stats import wilcoxon

    recs = _lines(folder_run["out"])
    common_scores, by_method, common = _independent_stats(recs)
    assert len(common) == 3  # m2 has no "comic"
    board = json.loads((folder_run["dir"] / "board.json").read_text())
    rows = {r["method"]: r for r in board["methods"]}
    with open(folder_run["dir"] / "board.csv", newline="") as fh:
        csv_rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(csv_rows) == {"m1", "m2"}
    means = {m: float(np.mean(v)) for m, v in common_scores.items()}
    best = min(means, key=means.get)
    for m, v in common_scores.items():
        for row in (rows[m], {k: (float(x) if k not in ("method", "common_set") and x else x) for k, x in csv_rows[m].items()}):
            assert row["n"] == len(common) and row["n_total"] == len(by_method[m])
            assert row["mean"] == pytest.approx(np.mean(v), rel=1e-12)
            assert row["median"] == pytest.approx(np.median(v), rel=1e-12)
            assert row["std"] == pytest.approx(np.std(v, ddof=1), rel=1e-9)
            assert row["ci95_low"] <= row["mean"] <= row["ci95_high"]
            assert row["rank"] == (1 if m == best else 2)
        assert rows[m]["common_set"] is True and csv_rows[m]["common_set"] == "True"
    other = "m2" if best == "m1" else "m1"
    (cmp,) = board["comparisons"]
    assert (cmp["a"], cmp["b"], cmp["n"]) == (best, other, 3)
    assert cmp["win_rate"] == pytest.approx(np.mean(common_scores[best] < common_scores[other]))
    assert cmp["p_value"] == pytest.approx(wilcoxon(common_scores[best], common_scores[other]).pvalue)
    assert float(csv_rows[other]["p_value_vs_best"]) == pytest.approx(cmp["p_value"])
    assert float(csv_rows[other]["win_rate_vs_best"]) == pytest.approx(np.mean(common_scores[other] < common_scores[best]))
    assert csv_rows[best]["p_value_vs_best"] == "" and rows[best]["win_rate_vs_best"] is None
    assert board["unmatched"]["outputs_without_ground_truth"]["m1"][0].endswith("extra.png")
    md = (folder_run["dir"] / "board.md").read_text()
    assert md.startswith("| Rank | Method |") and f"| 1 | {best} |" in md and "lower is better" in md


# ------------------------------------------------------------------ the statistics module on hand-made records


def _recs(method, scores, images=None):
    images = images or [f"img{i}" for i in range(len(scores))]
    return [
        {"method": method, "image": k, "score": s, "fidelity": s / 100, "naturalness_distorted": 0.5, "naturalness_reference": -0.5}
        for k, s in zip(images, scores)
    ]


def test_summarize_hand_computed_case():
    from scipy.stats import wilcoxon

    from modeling_afine.leaderboard import summarize

    a = [10.0, 20.0, 30.0, 40.0]
    b = [12.0, 19.0, 35.0, 44.0, 99.0]  # one image more than A
    board = summarize(_recs("A", a) + _recs("B", b) + [{"method": "B", "image": "img9", "error": "broken"}], n_resamples=2000)
    ra, rb = board.methods
    assert board.common_set and board.n_common == 4
    assert (ra["method"], ra["rank"], ra["n"], ra["n_total"]) == ("A", 1, 4, 4)
    assert (rb["method"], rb["rank"], rb["n"], rb["n_total"]) == ("B", 2, 4, 5)
    assert ra["mean"] == 25.0 and ra["median"] == 25.0 and ra["std"] == pytest.approx(np.std(a, ddof=1))
    assert rb["mean"] == pytest.approx(27.5) and rb["fidelity_mean"] == pytest.approx(0.275)
    (c,) = board.comparisons
    assert (c["a"], c["b"], c["n"], c["win_rate"], c["tie_rate"]) == ("A", "B", 4, 0.75, 0.0)
    assert c["p_value"] == pytest.approx(wilcoxon(a, b[:4]).pvalue)
    assert rb["win_rate_vs_best"] == 0.25 and rb["p_value_vs_best"] == c["p_value"]
    # the CI against an independent numpy bootstrap of the mean (same idea, another generator): close, and it holds the mean
    rng = np.random.default_rng(123)
    boot = np.mean(np.asarray(a)[rng.integers(0, 4, (20000, 4))], axis=1)
    assert ra["ci95_low"] == pytest.approx(np.percentile(boot, 2.5), abs=1.0)
    assert ra["ci95_high"] == pytest.approx(np.percentile(boot, 97.5), abs=1.0)
    # seeded: the same interval again
    again = summarize(_recs("A", a) + _recs("B", b), n_resamples=2000)
    assert again.methods[0]["ci95_low"] == ra["ci95_low"]


def test_summarize_edge_cases(tmp_path):
    from modeling_afine.leaderboard import METHOD_COLUMNS, summarize

    # one method: summarised over all its pairs, no comparison
    one = summarize([{**r, "method": None} for r in _recs("x", [3.0, 1.0, 2.0])])
    (row,) = one.methods
    assert row["method"] == "all" and row["n"] == row["n_total"] == 3 and not row["common_set"] and one.comparisons == []
    # all ties: p = 1, win rate 0; a single image: CI collapses to the value
    tie = summarize(_recs("A", [5.0, 6.0]) + _recs("B", [5.0, 6.0]))
    assert tie.comparisons[0]["p_value"] == 1.0 and tie.comparisons[0]["tie_rate"] == 1.0
    assert [r["rank"] for r in tie.methods] == [1, 1]
    single = summarize(_recs("A", [7.0]) + _recs("B", [9.0]))
    assert single.methods[0]["ci95_low"] == single.methods[0]["ci95_high"] == 7.0
    assert single.comparisons[0]["p_value"] == pytest.approx(1.0)
    assert summarize([{"method": "A", "error": "x"}]).methods == []
    # file forms round-trip
    for ext in ("csv", "json", "md"):
        tie.save(tmp_path / f"b.{ext}")
    with open(tmp_path / "b.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == METHOD_COLUMNS and len(list(reader)) == 2
    assert json.loads((tmp_path / "b.json").read_text())["comparisons"][0]["n"] == 2
    with pytest.raises(ValueError, match="csv, .json or .md"):
        tie.save(tmp_path / "b.txt")
    assert list(tie.to_pandas().columns) == list(METHOD_COLUMNS)


# ------------------------------------------------------------------ refusals before the model


_PROBE = """
import json, sys, time
t = time.perf_counter()
from modeling_afine.cli import main
results = []
for args in {cases!r}:
    s = time.perf_counter()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    results.append([code, time.perf_counter() - s])
heavy = sorted(m for m in ("torch", "transformers", "diffusers", "datasets", "accelerate") if m in sys.modules)
print(json.dumps({{"results": results, "heavy": heavy, "seconds": time.perf_counter() - t}}), file=sys.stderr)
"""


def test_refusals_before_the_model_exit_2_in_under_a_second(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    (tmp_path / "other").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "other" / "unrelated.png")
    gt, m1 = str(tree / "gt"), str(tree / "m1")
    cases = [
        (["score", str(tmp_path / "missing"), gt], "missing: no such file or folder"),
        (["score", m1, str(tmp_path / "missing_gt")], "missing_gt: no such file or folder"),
        (["score", str(tmp_path / "empty"), gt], "empty: output folder is empty"),
        (["score", str(tmp_path / "text"), gt], "text: output folder holds no image"),
        (["score", str(tmp_path / "other"), gt], "nothing matched"),
        (["score", m1, str(tree / "gt" / "baby.png")], "is a file, but other arguments are folders"),
        (["score", str(tmp_path / "nope.png"), str(tree / "gt" / "baby.png")], "nope.png: no such file or folder"),
        (["score", m1, "-r", str(tmp_path / "missing_gt")], "missing_gt: no such file or folder"),
        (["score", m1, gt, "--summary", str(tmp_path / "board.xlsx")], "board.xlsx: give a file name ending in .csv, .json or .md"),
        # `afine score m1/*.png gt/*.png` as the shell expands it
        (["score", f"{m1}/baby.png", f"{m1}/comic.png", f"{gt}/baby.png", f"{gt}/comic.png"], "afine score"),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", _PROBE.format(cases=[c for c, _ in cases])], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    wall = time.perf_counter() - start
    probe = json.loads(res.stderr.strip().splitlines()[-1])
    assert probe["heavy"] == [], f"the refusals imported {probe['heavy']}"
    lines = res.stderr.strip().splitlines()[:-1]
    assert len(lines) == len(cases), lines  # one line each
    for (code, seconds), (args, expected), line in zip(probe["results"], cases, lines):
        assert code == 2 and seconds < 1.0, (args, code, seconds)
        assert expected in line and "Traceback" not in line, (args, line)
    assert "two folders with matching names" in lines[-1] and "give the folders" in lines[-1]
    assert wall < 10  # interpreter start-up included, on a loaded machine

    # two methods' outputs of one image against its ground truth is not the shell-glob mistake
    from modeling_afine.folder_pairing import glob_mixup

    assert glob_mixup([f"{m1}/baby.png", f"{tree}/m2/baby.png"], f"{gt}/baby.png") is None
    assert glob_mixup([f"{m1}/baby.png", f"{m1}/comic.png"], f"{gt}/baby.png") is None
    # suffixed outputs (baby_SwinIR.png) with two ground truths among the "distorted" images: still two globs
    assert "two folders" in glob_mixup([f"{m1}/baby_x4.png", f"{gt}/baby.png", f"{gt}/comic.png"], f"{gt}/zebra.png")
    assert glob_mixup([f"{m1}/baby_x4.png", f"{gt}/baby.png"], f"{gt}/zebra.png") is None

    # the whole command for a missing folder, timed from outside as a user sees it
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "modeling_afine", "score", str(tmp_path / "missing"), gt], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 3.0


def test_strip_suffix_regex_and_explicit_reference(tree, converted_dir, tmp_path, capsys):
    gt = tree / "gt"
    code, out, err = run_inproc(capsys, "score", tree / "m3", gt, "--model", converted_dir, "-q")
    assert code == 2 and "nothing matched" in err and "--strip-suffix" in err
    results = {}
    for option in (["--strip-suffix", "_SwinIR"], ["--strip-regex", "_Swin[A-Z]+$"]):
        summary = tmp_path / "s.json"
        code, out, err = run_inproc(capsys, "score", tree / "m3", "-r", gt, "--model", converted_dir, "-q", "--json", "--summary", summary, *option)
        assert code == 0, err
        recs = json.loads(out)
        assert sorted(r["image"] for r in recs) == ["baby", "comic", "sub/bird", "sub/deep/zebra"]
        assert all(r["method"] == "m3" for r in recs)
        row = json.loads(summary.read_text())["methods"][0]
        assert row["n"] == row["n_total"] == 4 and not row["common_set"]  # one method: all its pairs
        results[option[0]] = [r["score"] for r in recs]
    assert results["--strip-suffix"] == results["--strip-regex"]
    # -r with image files: every positional is a distorted image (no glob refusal)
    code, out, err = run_inproc(capsys, "score", tree / "m1" / "baby.png", tree / "m2" / "baby.png", "-r", gt / "baby.png", "--model", converted_dir, "-q", "--json")
    assert code == 0 and len(json.loads(out)) == 2, err


# ------------------------------------------------------------------ --pairs headers and the method column


def test_pairs_header_in_any_order_method_column_and_headerless(tree, folder_run, converted_dir, tmp_path, capsys):
    expected = {(r["method"], r["image"]): r["score"] for r in _lines(folder_run["out"]) if "score" in r}
    rows = [(m, k) for (m, k) in expected]
    paths = {(r["method"], r["image"]): (r["distorted"], r["reference"]) for r in _lines(folder_run["out"]) if "score" in r}
    # reference first, method last: the names are honoured
    swapped = tmp_path / "swapped.csv"
    with open(swapped, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Reference", "distorted", "note", "method"])
        for key in rows:
            w.writerow([paths[key][1], paths[key][0], "x", key[0]])
    out = tmp_path / "pairs.jsonl"
    summary = tmp_path / "board.json"
    code, stdout, err = run_inproc(capsys, "score", "--pairs", swapped, "--model", converted_dir, "-q", "-o", out, "--summary", summary)
    assert code == 0, err
    recs = _lines(out)
    assert [r["method"] for r in recs] == [k[0] for k in rows]
    for r, key in zip(recs, rows):
        assert r["distorted"] == paths[key][0] and r["score"] == pytest.approx(expected[key], rel=1e-6)
    folder_board = json.loads((folder_run["dir"] / "board.json").read_text())
    pairs_board = json.loads(summary.read_text())
    # the same leaderboard (the CSV run keys images by reference path, the folder run by relative name)
    for a, b in zip(folder_board["methods"], pairs_board["methods"]):
        assert (a["method"], a["n"], a["n_total"], a["rank"]) == (b["method"], b["n"], b["n_total"], b["rank"])
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-6)
    assert "Leaderboard" in stdout and " vs " not in stdout.split("Leaderboard")[0]  # no per-pair lines with --output

    # the plain swapped header of the bug report
    from modeling_afine.cli_score import _read_pairs

    plain_swapped = tmp_path / "plain_swapped.csv"
    plain_swapped.write_text(f"reference,distorted\n{paths[rows[0]][1]},{paths[rows[0]][0]}\n")
    assert _read_pairs(str(plain_swapped)) == ([(paths[rows[0]][0], paths[rows[0]][1], None)], False)

    # no header: distorted, reference by position, as before
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"{paths[k][0]},{paths[k][1]}\n" for k in rows[:2]))
    code, stdout, err = run_inproc(capsys, "score", "--pairs", plain, "--model", converted_dir, "-q", "--json")
    assert code == 0, err
    assert [r["score"] for r in json.loads(stdout)] == pytest.approx([expected[k] for k in rows[:2]], rel=1e-6)

    # a header that names neither column, or only one of them: exit 2 before the model, one line
    for header, message in (("image_a,image_b", "names neither distorted nor reference"), ("distorted,target", "has no reference column")):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"{header}\n{paths[rows[0]][0]},{paths[rows[0]][1]}\n")
        code, _, err = run_inproc(capsys, "score", "--pairs", bad)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ memory faults


def test_memory_faults_halve_the_batch_and_then_become_error_records(model, tree, monkeypatch):
    pairs = [(str(tree / m / "baby.png"), str(tree / "gt" / "baby.png")) for m in ("m1", "m2")]
    pairs += [(str(tree / "m1" / "sub" / "deep" / "zebra.png"), str(tree / "gt" / "sub" / "deep" / "zebra.png"))]
    pairs += [(str(tree / "m2" / "sub" / "deep" / "zebra.png"), str(tree / "gt" / "sub" / "deep" / "zebra.png"))]
    plain = dict(AfineScorer(model, batch_size=8, num_workers=0).iter_pairs(pairs))  # two references, each shared by two
    original = AfineScorer._run
    seen: list[int] = []

    def cuda_oom_above_one(self, **kwargs):
        seen.append(kwargs["distorted"].shape[0])
        if kwargs["distorted"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, **kwargs)

    monkeypatch.setattr(AfineScorer, "_run", cuda_oom_above_one)
    scorer = AfineScorer(model, batch_size=8, num_workers=0)
    halved = dict(scorer.iter_pairs(pairs))
    assert seen == [2, 1, 1, 2, 1, 1]  # each reference's two images: one fault, then one pair at a time
    seen.clear()
    assert dict(scorer.iter_pairs(pairs)).keys() == halved.keys()
    assert seen == [1, 1, 1, 1]  # the halved size is remembered per image size: no fault paid twice
    for i in range(4):
        for f in FIELDS:
            torch.testing.assert_close(halved[i][f], plain[i][f], rtol=1e-6, atol=1e-6)

    def cpu_fault_on_one_image(self, **kwargs):
        sums = kwargs["distorted"][:, 0].sum(dim=(1, 2))
        if any(abs(float(v) - target) < 1e-3 for v in sums):  # the batch holds that image
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(self, **kwargs)

    scorer = AfineScorer(model, batch_size=8, num_workers=0)
    x = scorer._load(pairs[1][0], "x")
    from modeling_afine.modeling_afine import stretch_to_multiple, target_size

    target = float(stretch_to_multiple(x[None], size=target_size(*x.shape[-2:]))[:, 0].sum())
    monkeypatch.setattr(AfineScorer, "_run", cpu_fault_on_one_image)
    got = dict(scorer.iter_pairs(pairs))
    assert isinstance(got[1], MemoryError) and "out of memory" in str(got[1]) and "m2/baby.png" in str(got[1])
    for i in (0, 2, 3):
        torch.testing.assert_close(got[i]["score"], plain[i]["score"], rtol=1e-6, atol=1e-6)

    # a failed allocation while decoding (in the background threads) fails that image's pair only
    from modeling_afine import scoring

    decode = scoring.image_to_tensor

    def no_memory_for_zebra(image, name):
        if "m2/sub/deep/zebra" in str(image):
            raise MemoryError()
        return decode(image, name)

    monkeypatch.setattr(AfineScorer, "_run", original)
    monkeypatch.setattr(scoring, "image_to_tensor", no_memory_for_zebra)
    got = dict(AfineScorer(model, batch_size=8, num_workers=2).iter_pairs(pairs))
    assert isinstance(got[3], MemoryError) and "zebra.png: out of memory decoding" in str(got[3])
    assert all(not isinstance(got[i], Exception) for i in (0, 1, 2))


def test_memory_fault_in_the_command_is_an_error_record_without_traceback(tree, converted_dir, tmp_path, capsys, monkeypatch):
    original = AfineScorer._run

    def always_oom_for_m2(self, **kwargs):
        if kwargs["distorted"].shape[0] > 1:
            raise MemoryError()
        return original(self, **kwargs)

    calls = {"n": 0}

    def flaky(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # one single-pair pass fails outright
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return always_oom_for_m2(self, **kwargs)

    monkeypatch.setattr(AfineScorer, "_run", flaky)
    out = tmp_path / "oom.jsonl"
    code, stdout, err = run_inproc(capsys, "score", tree / "m1", tree / "m2", tree / "gt", "--model", converted_dir, "-q", "-o", out, "--workers", "0")
    assert code == 1 and "Traceback" not in err
    recs = [r for r in _lines(out) if "unmatched" not in r]
    errors = [r for r in recs if "error" in r]
    assert len(recs) == 7 and len(errors) == 1 and "out of memory" in errors[0]["error"]
    assert "Leaderboard" in stdout


# ------------------------------------------------------------------ Python API, resume and sharding of folder runs


def test_score_methods_returns_the_command_line_table(tree, folder_run, model, monkeypatch):
    from modeling_afine import score_methods

    encoded, passes = [], []
    encode, embed = model.encode_reference, model.vision_model.embeddings.forward
    monkeypatch.setattr(model, "encode_reference", lambda x: encoded.append(x.shape[0]) or encode(x))
    # every backbone pass starts with the patch embedding: count the images that go through it
    monkeypatch.setattr(model.vision_model.embeddings, "forward", lambda x, **kw: passes.append(x.shape[0]) or embed(x, **kw))
    # three ground truths shared by both methods: each through the backbone once (K + 1 = 3 images each); "comic"
    # has one output only and goes with it in one joint pass of 2 images: 3 * 3 + 2 = 11, not 2 * 7. With both
    # methods' outputs in one batch the ground truth runs with that batch; when they span batches it is encoded once
    # and the encoding serves every batch.
    one_batch = score_methods({"m1": tree / "m1", "m2": tree / "m2"}, tree / "gt", scorer=AfineScorer(model, batch_size=1))
    assert encoded == [1, 1, 1]
    assert sum(passes) == 11
    encoded.clear(), passes.clear()
    result = score_methods({"m1": tree / "m1", "m2": tree / "m2"}, tree / "gt", scorer=AfineScorer(model))
    assert encoded == [] and sum(passes) == 11
    assert [r["score"] for r in one_batch.records] == pytest.approx([r["score"] for r in result.records], abs=1e-5)
    cli = {(r["method"], r["image"]): r["score"] for r in _lines(folder_run["out"]) if "score" in r}
    assert {(r["method"], r["image"]): pytest.approx(r["score"], rel=1e-6) for r in result.records} == cli
    board = json.loads((folder_run["dir"] / "board.json").read_text())["methods"]
    assert [(r["method"], r["rank"], r["n"]) for r in result.summary] == [(r["method"], r["rank"], r["n"]) for r in board]
    assert result.unmatched["ground_truths_without_output"] == {"m2": ["comic"]}
    frames = score_methods(tree / "m1", tree / "gt", scorer=AfineScorer(model), as_dataframe=True)
    assert list(frames.records["image"]) == ["baby", "comic", "sub/bird", "sub/deep/zebra"]
    assert frames.summary.loc[0, "n"] == 4 and frames.summary.loc[0, "method"] == "m1"


def test_folder_run_resumes_after_ctrl_c_and_shards_merge_to_one_process(tree, folder_run, converted_dir, tmp_path, capsys, monkeypatch):
    from modeling_afine import cli_score

    original = AfineScorer.iter_pairs

    def interrupted_after_two(self, pairs, **kwargs):
        for n, item in enumerate(original(self, pairs, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    args = ["score", tree / "m1", tree / "m2", tree / "gt", "--model", converted_dir, "-q"]
    out = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(AfineScorer, "iter_pairs", interrupted_after_two)
    code, _, err = run_inproc(capsys, *args, "-o", out)
    assert code == 130 and "2 new result(s) saved" in err
    monkeypatch.setattr(AfineScorer, "iter_pairs", original)
    code, _, err = run_inproc(capsys, *args, "-o", out)
    assert code == 0, err
    assert out.read_text() == folder_run["out"].read_text()

    class NoGroup:  # ranks run one after the other here; the real two-process run is the slow test below
        def __init__(self, world, **kwargs):
            pass

        def barrier(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(cli_score, "ProcessGroup", NoGroup)
    sharded = tmp_path / "sharded.jsonl"
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        code, _, err = run_inproc(capsys, *args, "-o", sharded)
        assert code == 0, err
    assert sharded.read_text() == folder_run["out"].read_text()


@pytest.mark.slow
def test_two_processes_with_accelerate_merge_a_folder_run_to_the_single_process_output(tree, folder_run, converted_dir, tmp_path):
    """`accelerate launch` on 2 CPU processes (gloo): the merged output equals the single-process run's file."""
    from .test_cli_scale import _free_port

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    score = ["-m", "modeling_afine", "score", str(tree / "m1"), str(tree / "m2"), str(tree / "gt"), "--model", str(converted_dir), "-q"]
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    res = subprocess.run([*launch, *score, "-o", str(tmp_path / "multi.jsonl"), "--summary", str(tmp_path / "board.csv")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "over 2 processes; 0 failed" in res.stderr
    assert (tmp_path / "multi.jsonl").read_text() == folder_run["out"].read_text()
    assert "Leaderboard" in res.stdout and (tmp_path / "board.csv").read_text().startswith("rank,method,")
