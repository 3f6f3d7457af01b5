"""Label tools and their CLI subcommands: files in the official formats, checked against independent
constructions; deterministic given a seed."""

import itertools
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from scipy import stats

from dataset_scripts.cli import main as cli
from dataset_scripts.derive import split_references

from .conftest import DIFFIQA_VOTES

RANK = {"Positive": 1, "Similar": 0, "Negative": -1}
G = {"Positive": "1", "Similar": "0.5", "Negative": "0"}


def majority(votes):
    c = Counter(votes).most_common()
    return None if c[0][1] < 2 else c[0][0]


def expected_lines(folder):
    """Official Triplet.txt / TripletEachType lines, written out from the spec independently."""
    six, types = [], {}
    for ref in sorted(DIFFIQA_VOTES[folder]):
        lab = [(f"{ref}_{v}.png", majority(x)) for v, x in sorted(DIFFIQA_VOTES[folder][ref].items())]
        lab = [(n, l) for n, l in lab if l]
        for (a, la), (b, lb) in itertools.combinations(lab, 2):
            if la == lb and la != "Similar":
                continue
            g = "0.5" if la == lb else ("1" if RANK[la] > RANK[lb] else "0")
            six.append(f"{a},{b},{ref}.png,{g},{G[la]},{G[lb]}")
            t = "".join(sorted(la[0] + lb[0] + "Y", key="PSNY".index))
            types.setdefault(t, []).append(f"{a},{b},{ref}.png,{g}")
        for a, la in lab:
            six.append(f"{a},{ref}.png,{ref}.png,{G[la]},{G[la]},0.5")
            types.setdefault(la[0] + "YY", []).append(f"{a},{ref}.png,{ref}.png,{G[la]}")
    return six, types


def test_diffiqa_majority_triplets_types_cli(diffiqa_root, tmp_path):
    out = tmp_path / "out"
    assert cli(["majority", str(diffiqa_root), "--out-dir", str(out)]) == 0
    assert cli(["triplets", "diffiqa", str(diffiqa_root), "--out-dir", str(out)]) == 0
    assert cli(["types", str(diffiqa_root), "--out-dir", str(out)]) == 0
    for folder in ("Train", "Validation", "Test"):
        six, types = expected_lines(folder)
        assert (out / folder / "Triplet" / "Triplet.txt").read_text().splitlines() == six
        for t in ("PSY", "PNY", "SNY", "SSY", "PYY", "SYY", "NYY"):
            assert (out / folder / "TripletEachType" / f"{t}.txt").read_text().splitlines() == types.get(t, [])
        maj = (out / folder / "majority.txt").read_text().splitlines()
        want = [f"{r}_{v}.png,{r}.png,{majority(x)},{','.join(x)}"
                for r in sorted(DIFFIQA_VOTES[folder]) for v, x in sorted(DIFFIQA_VOTES[folder][r].items()) if majority(x)]
        assert maj == want
    assert cli(["types", str(diffiqa_root), "--types", "PSY,XXX", "--out-dir", str(out)]) == 2


def test_classic_triplets_cli_seeded(classic_roots, tmp_path):
    root, truth = classic_roots["pipal"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli(["triplets", "pipal", str(root), "--seed", "3", "--out-dir", str(a)]) == 0
    assert cli(["triplets", "pipal", str(root), "--seed", "3", "--out-dir", str(b)]) == 0
    assert cli(["triplets", "pipal", str(root), "--seed", "4", "--out-dir", str(c)]) == 0
    ta = (a / "Train" / "Triplet" / "Triplet.txt").read_text()
    assert ta == (b / "Train" / "Triplet" / "Triplet.txt").read_text()
    assert ta != (c / "Train" / "Triplet" / "Triplet.txt").read_text()
    lines = [ln.split(",") for ln in ta.splitlines()]
    assert len(lines) == 3 * 7 * round(math.log2(7))
    assert {ln[2] for ln in lines} == {f"{s}.bmp" for s in truth["Train"]}


def test_thurstone_cli_recovers_order(sriqa_root, tmp_path):
    root, truth = sriqa_root
    out = tmp_path / "mos"
    assert cli(["thurstone", str(root), "--out-dir", str(out)]) == 0
    for g, latent in truth["latent"].items():
        rows = [ln.split(",") for ln in (out / "MOS" / f"{g}.txt").read_text().splitlines()]
        scores = {n: float(s) for n, s in rows}
        assert set(scores) == set(latent)
        assert [float(s) for _, s in rows] == sorted(scores.values(), reverse=True)
        assert max(scores.values()) == 100.0 and min(scores.values()) == 0.0
        names = sorted(latent)
        assert stats.spearmanr([latent[n] for n in names], [scores[n] for n in names]).statistic > 0.7
        reg = [ln.split(",")[0] for ln in (out / "MOS_Reg" / f"{g}.txt").read_text().splitlines()]
        assert sorted(reg) == sorted(n for n in latent if "Original" in n or "SwinIR" in n or "RealESRNet" in n)
        gen = dict(ln.split(",") for ln in (out / "MOS_Gen" / f"{g}.txt").read_text().splitlines())
        assert all(float(v) == scores[k] for k, v in gen.items())  # copied, not re-normalised


def test_normalize_mos_cli(classic_roots, sriqa_root, tmp_path):
    root, truth = classic_roots["pipal"]
    out = tmp_path / "pipal.txt"
    assert cli(["normalize-mos", "classic", str(root / "Train" / "MOS"), str(out)]) == 0
    rows = [ln.split(",") for ln in out.read_text().splitlines()]
    raw = [(d, r, m) for s in sorted(truth["Train"]) for d, r, m, _ in truth["Train"][s]]
    lo, hi = min(m for *_, m in raw), max(m for *_, m in raw)
    assert [(d, r) for d, r, _ in rows] == [(d, r) for d, r, _ in raw]
    for (_, _, v), (_, _, m) in zip(rows, raw):
        assert float(v) == pytest.approx(-((m - lo) / (hi - lo) * 4 - 2))
    sroot, _ = sriqa_root
    out2 = tmp_path / "sriqa.txt"
    assert cli(["normalize-mos", "sriqa", str(sroot / "MOS"), str(out2)]) == 0
    rows = [ln.split(",") for ln in out2.read_text().splitlines()]
    src = {ln.split(",")[0]: float(ln.split(",")[1]) for f in (sroot / "MOS").glob("*.txt") for ln in f.read_text().split()}
    for name, ref, v in rows:
        assert ref == name.split("_")[0] + "_Original.png"
        assert float(v) == pytest.approx(100 - src[name])
    assert cli(["normalize-mos", "classic", str(tmp_path / "none"), str(out)]) == 1


def test_split_references_rule():
    names = [f"r{i:03d}" for i in range(37)]
    s = split_references(names, seed=5)
    assert [len(v) for v in s.values()] == [round(37 * 0.7), 37 - round(37 * 0.7) - round(37 * 0.2), round(37 * 0.2)]
    assert sorted(sum(s.values(), [])) == names
    assert split_references(list(reversed(names)), seed=5) == s  # input order does not matter
    assert split_references(names, seed=6) != s


def test_split_diffiqa_cli(tmp_path, factories):
    src = tmp_path / "raw"
    votes = {"all": {f"0000{i:02d}x0y0": {v: ("Positive", "Similar", "Positive") for v in ("01", "02")} for i in range(10)}}
    factories["diffiqa"](src, votes, split_folders=False, size=(8, 8))
    dst = tmp_path / "split"
    assert cli(["split", "diffiqa", str(src), str(dst), "--seed", "1", "--mode", "hardlink"]) == 0
    refs = {f: sorted(p.stem for p in (dst / f / "images" / "Original").glob("*.png")) for f in ("Train", "Validation", "Test")}
    assert [len(refs[f]) for f in ("Train", "Validation", "Test")] == [7, 1, 2]
    assert sorted(sum(refs.values(), [])) == sorted(votes["all"])
    for f, rs in refs.items():
        for r in rs:
            assert (dst / f / "labels" / "B" / "02" / f"{r}_02.json").is_file()
            assert (dst / f / "images" / "01" / f"{r}_01.png").is_file()
    assert cli(["check", str(dst), "--quiet"]) == 0


def test_split_classic_cli(tmp_path):
    lst = tmp_path / "dmos.csv"
    lines = ["dist_img,ref_img,dmos,var"] + [f"I{r:02d}_{d:02d}_01.png,I{r:02d}.png,{d / 2},0.1" for r in range(1, 11) for d in range(1, 4)]
    lst.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "K"
    assert cli(["split", "classic", str(lst), str(dst), "--seed", "0"]) == 0
    files = {f: sorted(p.name for p in (dst / f / "MOS").glob("*.txt")) for f in ("Train", "Validation", "Test")}
    assert [len(v) for v in files.values()] == [7, 1, 2]
    one = (dst / "Train" / "MOS" / files["Train"][0]).read_text().splitlines()
    assert len(one) == 3 and one[0].count(",") == 3


def test_export_cli_and_module_entry(sriqa_root, tmp_path):
    root, _ = sriqa_root
    out = tmp_path / "hub"
    assert cli(["export", "sriqa_bench", str(root), str(out), "--config", "MOS", "--config", "pairs",
                "--cache-dir", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["MOS", "README.md", "pairs"]
    r = subprocess.run([sys.executable, "-m", "dataset_scripts", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and "thurstone" in r.stdout
    assert cli([]) == 2


def test_sriqa_pairs_cli(sriqa_root, tmp_path):
    root, _ = sriqa_root
    out = tmp_path / "pairs_gen.txt"
    assert cli(["pairs", str(root), "--mos-folder", "MOS_Gen", "--out", str(out)]) == 0
    want = []
    for f in sorted((root / "MOS_Gen").glob("*.txt")):
        rows = [(ln.split(",")[0], float(ln.split(",")[1])) for ln in f.read_text().split()]
        for (a, sa), (b, sb) in itertools.combinations(rows, 2):
            want.append(f"{a},{b},{f.stem}_Original.png," + ("1" if sa > sb else "0" if sa < sb else "0.5"))
    assert out.read_text().splitlines() == want
