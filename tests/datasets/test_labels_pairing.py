"""Majority vote, DiffIQA triplets / types, nlogn triplets and SRIQA pairs against hand-computed cases."""

import math

import pytest

from dataset_scripts.labels import majority_pairs, majority_vote, type_name
from dataset_scripts.pairing import all_pairs, diffiqa_triplets, filter_types, nlogn_triplets
from dataset_scripts.schema import MosRecord, PairRecord, TripletRecord

P, S, N = "Positive", "Similar", "Negative"


@pytest.mark.parametrize(
    "votes, expected",
    [((P, P, S), P), ((S, N, N), N), ((S, S, S), S), ((P, S, N), None), ((N, P, N), N), ((P, N), None), ((), None)],
)
def test_majority_vote(votes, expected):
    assert majority_vote(votes) == expected


def test_majority_vote_rejects_unknown_label():
    with pytest.raises(ValueError, match="Better"):
        majority_vote(("Better", P, P))


def test_majority_pairs_drops_three_way_disagreement():
    votes = {"r1": {"02": {"A": P, "B": S, "C": N}, "01": {"A": S, "B": S, "C": P}}, "r0": {"01": {"A": N, "B": N, "C": N}}}
    pairs = majority_pairs(votes)
    assert [(p.group, p.distorted_name, p.label, p.g, p.votes) for p in pairs] == [
        ("r0", "r0_01.png", N, 0.0, (N, N, N)),
        ("r1", "r1_01.png", S, 0.5, (S, S, P)),
    ]
    assert pairs[0].reference_name == "r0.png"


def test_type_names():
    assert type_name(S, P, "Original") == "PSY"
    assert type_name(N, "Original", "Original") == "NYY"
    assert type_name(S, S, "Original") == "SSY"


def _pair(name, label):
    return PairRecord("r", f"r_{name}.png", "r.png", label, {P: 1.0, S: 0.5, N: 0.0}[label])


def test_diffiqa_triplets_hand_computed():
    # labels: 01 P, 02 P, 03 S, 04 N, 05 S
    pairs = [_pair("01", P), _pair("02", P), _pair("03", S), _pair("04", N), _pair("05", S)]
    got = [(t.img1_name[2:4], t.img2_name[2:4] if t.img2_name != "r.png" else "ref", t.g12, t.g1ref, t.g2ref, t.type)
           for t in diffiqa_triplets(pairs)]
    expected = [
        # 01-02 is P-P: dropped
        ("01", "03", 1.0, 1.0, 0.5, "PSY"),
        ("01", "04", 1.0, 1.0, 0.0, "PNY"),
        ("01", "05", 1.0, 1.0, 0.5, "PSY"),
        ("02", "03", 1.0, 1.0, 0.5, "PSY"),
        ("02", "04", 1.0, 1.0, 0.0, "PNY"),
        ("02", "05", 1.0, 1.0, 0.5, "PSY"),
        ("03", "04", 1.0, 0.5, 0.0, "SNY"),
        ("03", "05", 0.5, 0.5, 0.5, "SSY"),
        ("04", "05", 0.0, 0.0, 0.5, "SNY"),
        ("01", "ref", 1.0, 1.0, 0.5, "PYY"),
        ("02", "ref", 1.0, 1.0, 0.5, "PYY"),
        ("03", "ref", 0.5, 0.5, 0.5, "SYY"),
        ("04", "ref", 0.0, 0.0, 0.5, "NYY"),
        ("05", "ref", 0.5, 0.5, 0.5, "SYY"),
    ]
    assert got == expected
    assert all(t.ref_name == "r.png" for t in diffiqa_triplets(pairs))


def test_filter_types_and_official_lines():
    pairs = [_pair("01", P), _pair("03", S), _pair("04", N)]
    by_type = filter_types(diffiqa_triplets(pairs), ["PSY", "PNY", "SNY", "PYY", "NYY"])
    assert [t.to_line(4) for t in by_type["PSY"]] == ["r_01.png,r_03.png,r.png,1"]
    assert [t.to_line(4) for t in by_type["SNY"]] == ["r_03.png,r_04.png,r.png,1"]
    assert [t.to_line(4) for t in by_type["NYY"]] == ["r_04.png,r.png,r.png,0"]
    assert [t.to_line(6) for t in by_type["PYY"]] == ["r_01.png,r.png,r.png,1,1,0.5"]
    with pytest.raises(ValueError):
        filter_types([], ["XYZ"])


def _classic_records(n=6, ref="A0001.bmp", group="A0001", scores=None):
    scores = scores or [1500.0, 1400.0, 1400.0, 1200.0, 1100.0, 1700.0][:n]
    return [MosRecord(group, f"A0001_00_{i:02d}.bmp", ref, s) for i, s in enumerate(scores)]


def test_nlogn_triplets_structure():
    recs = _classic_records()
    trips = nlogn_triplets(recs, seed=3)
    n = len(recs) + 1
    k = round(math.log2(n))  # 7 elements -> round(2.807) = 3
    assert k == 3 and len(trips) == n * k
    score = {r.image_name: r.mos for r in recs} | {"A0001.bmp": 9999.0}
    for elem in score:
        partners = [t.img2_name for t in trips if t.img1_name == elem]
        assert len(partners) == k and len(set(partners)) == k and elem not in partners
    for t in trips:
        assert t.ref_name == "A0001.bmp"  # taken from the MOS file, not rebuilt as .png
        s1, s2 = score[t.img1_name], score[t.img2_name]
        assert t.g12 == (1.0 if s1 > s2 else 0.0 if s1 < s2 else 0.5)
        assert t.g1ref == (0.5 if t.img1_name == "A0001.bmp" else 0.0)
        assert t.g2ref == (0.5 if t.img2_name == "A0001.bmp" else 0.0)
        assert t.type == ("NYY" if "A0001.bmp" in (t.img1_name, t.img2_name) else "NNY")


def test_nlogn_is_seeded_and_group_local():
    a = _classic_records()
    b = [MosRecord("A0002", r.image_name.replace("A0001", "A0002"), "A0002.bmp", r.mos) for r in a]
    assert nlogn_triplets(a, seed=1) == nlogn_triplets(a, seed=1)
    assert nlogn_triplets(a, seed=1) != nlogn_triplets(a, seed=2)
    # a group's triplets do not depend on the other groups or on group order
    both = nlogn_triplets(b + a, seed=1)
    assert [t for t in both if t.group == "A0001"] == nlogn_triplets(a, seed=1)


def test_all_pairs_sriqa():
    rows = [("x_Original.png", 100.0), ("x_SeeSRx4.png", 60.0), ("x_SwinIRx4.png", 60.0), ("x_BSRGANx4.png", 0.0)]
    pairs = all_pairs(rows, group="x", ref_name="x_Original.png", ref_score=100.0)
    assert len(pairs) == 6
    got = [(t.img1_name, t.img2_name, t.g12, t.g1ref, t.g2ref) for t in pairs]
    assert got == [
        ("x_Original.png", "x_SeeSRx4.png", 1.0, 0.5, 0.0),
        ("x_Original.png", "x_SwinIRx4.png", 1.0, 0.5, 0.0),
        ("x_Original.png", "x_BSRGANx4.png", 1.0, 0.5, 0.0),
        ("x_SeeSRx4.png", "x_SwinIRx4.png", 0.5, 0.0, 0.0),
        ("x_SeeSRx4.png", "x_BSRGANx4.png", 1.0, 0.0, 0.0),
        ("x_SwinIRx4.png", "x_BSRGANx4.png", 1.0, 0.0, 0.0),
    ]
    assert all(t.ref_name == "x_Original.png" for t in pairs)


def test_triplet_line_format():
    t = TripletRecord("g", "a.png", "b.png", "r.png", 0.5, 1.0, 0.0)
    assert t.to_line() == "a.png,b.png,r.png,0.5,1,0"
    with pytest.raises(ValueError):
        TripletRecord("g", "a", "b", "r", 1.0).to_line(6)
