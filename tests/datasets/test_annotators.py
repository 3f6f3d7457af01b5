"""An unexpected or unfinished annotator in a DiffIQA label tree is warned about by name and left out of the
majority vote; it does not refuse the whole set (issue 18)."""

import json
import shutil

import pytest

import dataset_scripts
from dataset_scripts.labels import majority_vote
from dataset_scripts.problems import DatasetProblemWarning

from .conftest import DIFFIQA_VOTES

P, S, N = "Positive", "Similar", "Negative"


def _stray(root, annotator, ref, variant, label):
    src = root / "labels" / "A" / variant / f"{ref}_{variant}.json"
    data = json.loads(src.read_text())
    data["Picture_AI"]["Label"] = label
    dst = root / "labels" / annotator / variant / src.name
    dst.parent.mkdir(parents=True)
    dst.write_text(json.dumps(data))


def _rows(ds, *cols):
    return [tuple(r[c] for c in cols) for r in ds]


def _expected_pairs(votes: dict) -> list:
    """Majority pairs computed here from the votes the factory wrote (A, B, C)."""
    out = []
    for ref in sorted(votes):
        for v in sorted(votes[ref]):
            label = majority_vote(votes[ref][v])
            if label is not None:
                out.append((f"{ref}_{v}.png", label))
    return out


@pytest.fixture()
def one_split(tmp_path, factories):
    root = tmp_path / "D"
    votes = {"full": DIFFIQA_VOTES["Train"]}
    factories["diffiqa"](root, votes, split_folders=False)
    return root, votes["full"]


def test_stray_annotator_is_named_and_left_out(one_split, tmp_path):
    root, votes = one_split
    # 000001x0y0_01 is (P, P, S); a fourth "Similar" vote would make it a tie and drop the pair
    _stray(root, "mallory", "000001x0y0", "01", S)
    with pytest.warns(DatasetProblemWarning, match=r"mallory \(1 of 18 labels\)") as rec:
        pairs = dataset_scripts.load("diffiqa", root, "pairs", split="full", cache_dir=tmp_path / "c")
    assert "left out of the majority vote" in str(rec[0].message)
    label = pairs.features["label"].int2str
    assert [(n, label(lab)) for n, lab in _rows(pairs, "distorted_name", "label")] == _expected_pairs(votes)
    assert {tuple(a) for a in pairs["annotators"]} == {("A", "B", "C")}
    row = [r for r in pairs if r["distorted_name"] == "000001x0y0_01.png"][0]
    assert pairs.features["votes"].feature.int2str(row["votes"]) == [P, P, S]
    # triplets are built from those pairs, so they ignore the stray vote as well
    with pytest.warns(DatasetProblemWarning, match="mallory"):
        trip = dataset_scripts.load("diffiqa", root, "triplets", split="full", cache_dir=tmp_path / "c")
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    shutil.rmtree(clean / "labels" / "mallory")
    clean_trip = dataset_scripts.load("diffiqa", clean, "triplets", split="full", cache_dir=tmp_path / "c")
    cols = ("img1_name", "img2_name", "ref_name", "g12", "g1ref", "g2ref")
    assert _rows(trip, *cols) == _rows(clean_trip, *cols)
    # the raw view keeps every judgement, and says so
    with pytest.warns(DatasetProblemWarning, match="mallory .*included as they are"):
        ann = dataset_scripts.load("diffiqa", root, "annotations", split="full", cache_dir=tmp_path / "c")
    assert sorted(ann["annotator"]).count("mallory") == 1 and len(ann) == 3 * 18 + 1
    # loading again from the cache repeats the warning
    with pytest.warns(DatasetProblemWarning, match="mallory"):
        dataset_scripts.load("diffiqa", root, "pairs", split="full", cache_dir=tmp_path / "c")


def test_unfinished_annotator_is_left_out(one_split, tmp_path):
    root, votes = one_split
    (root / "labels" / "C" / "03" / "000002x32y0_03.json").unlink()
    with pytest.warns(DatasetProblemWarning, match=r"C \(17 of 18 labels\)"):
        pairs = dataset_scripts.load("diffiqa", root, "pairs", split="full", cache_dir=tmp_path / "c")
    ab = {ref: {v: labs[:2] for v, labs in by_v.items()} for ref, by_v in votes.items()}
    label = pairs.features["label"].int2str
    assert [(n, label(lab)) for n, lab in _rows(pairs, "distorted_name", "label")] == _expected_pairs(ab)
    assert {tuple(a) for a in pairs["annotators"]} == {("A", "B")}


def test_nobody_finished_uses_the_labels_present(one_split, tmp_path):
    root, votes = one_split
    (root / "labels" / "A" / "01" / "000001x0y0_01.json").unlink()
    (root / "labels" / "B" / "02" / "000001x0y0_02.json").unlink()
    (root / "labels" / "C" / "06" / "000003x0y64_06.json").unlink()
    with pytest.warns(DatasetProblemWarning, match="majority there is taken over the labels present"):
        pairs = dataset_scripts.load("diffiqa", root, "pairs", split="full", cache_dir=tmp_path / "c")
    present = {ref: {v: list(labs) for v, labs in by_v.items()} for ref, by_v in votes.items()}
    present["000001x0y0"]["01"] = list(votes["000001x0y0"]["01"][1:])
    present["000001x0y0"]["02"] = [votes["000001x0y0"]["02"][i] for i in (0, 2)]
    present["000003x0y64"]["06"] = list(votes["000003x0y64"]["06"][:2])
    label = pairs.features["label"].int2str
    assert [(n, label(lab)) for n, lab in _rows(pairs, "distorted_name", "label")] == _expected_pairs(present)


def test_check_still_lists_the_missing_labels(one_split):
    from dataset_scripts.check import check

    root, _ = one_split
    _stray(root, "mallory", "000001x0y0", "01", S)
    report = check(root, decode=False)
    assert not report.ok and all(p.kind == "wrong_count" and "mallory" in p.message for p in report.problems)


def test_majority_tool_agrees_with_load(one_split, tmp_path):
    from dataset_scripts.derive import diffiqa_majority

    root, votes = one_split
    _stray(root, "mallory", "000001x0y0", "01", S)
    with pytest.warns(DatasetProblemWarning, match="mallory"):
        pairs = diffiqa_majority(root)
    assert [(p.distorted_name, p.label) for p in pairs] == _expected_pairs(votes)
    assert {len(p.votes) for p in pairs} == {3}
