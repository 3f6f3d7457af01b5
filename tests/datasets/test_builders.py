"""Builders: every config loads, Image columns decode, values match independent constructions, the second
load hits the cache, and Parquet export round-trips."""

import itertools
import math
from collections import Counter

import datasets
import pytest
from PIL import Image

import dataset_scripts
from dataset_scripts.builders import BUILDERS
from dataset_scripts.export import export_parquet
from dataset_scripts.schema import MOS_COLUMNS, PAIR_COLUMNS, TRIPLET_COLUMNS

from .conftest import DIFFIQA_VOTES

G = {"Positive": 1.0, "Similar": 0.5, "Negative": 0.0}
RANK = {"Positive": 1, "Similar": 0, "Negative": -1}
SPLIT = {"Train": "train", "Validation": "validation", "Test": "test"}


def independent_majority(votes):
    c = Counter(votes).most_common()
    return None if c[0][1] < 2 else c[0][0]


def independent_diffiqa(split_folder):
    """Spec 3.1 construction written out independently: {pairs, triplets} as tuples of names/labels."""
    pairs, trips = [], []
    for ref in sorted(DIFFIQA_VOTES[split_folder]):
        labelled = []
        for v in sorted(DIFFIQA_VOTES[split_folder][ref]):
            lab = independent_majority(DIFFIQA_VOTES[split_folder][ref][v])
            if lab:
                labelled.append((f"{ref}_{v}.png", lab))
                pairs.append((f"{ref}_{v}.png", f"{ref}.png", lab))
        for (n1, l1), (n2, l2) in itertools.combinations(labelled, 2):
            if l1 == l2 and l1 != "Similar":
                continue
            g12 = 0.5 if l1 == l2 else float(RANK[l1] > RANK[l2])
            trips.append((n1, n2, f"{ref}.png", g12, G[l1], G[l2]))
        for n1, l1 in labelled:
            trips.append((n1, f"{ref}.png", f"{ref}.png", G[l1], G[l1], 0.5))
    return pairs, trips


def decoded(ds, columns):
    """Rows of ``columns`` with ClassLabel codes turned back into their names."""
    out = []
    for r in ds.select_columns(columns):
        row = []
        for c in columns:
            f = ds.features[c]
            row.append(f.int2str(r[c]) if isinstance(f, datasets.ClassLabel) and r[c] is not None else r[c])
        out.append(tuple(row))
    return out


def letters(l1, l2):
    code = {"Positive": "P", "Similar": "S", "Negative": "N", None: "Y"}
    return "".join(sorted(code[l1] + code[l2] + "Y", key="PSNY".index))


@pytest.fixture(scope="module")
def loaded(diffiqa_root, sriqa_root, classic_roots, hf_cache):
    out = {}
    out["diffiqa"] = {c: dataset_scripts.load("diffiqa", diffiqa_root, c, cache_dir=hf_cache)
                      for c in dataset_scripts.config_names("diffiqa")}
    out["sriqa_bench"] = {c: dataset_scripts.load("sriqa_bench", sriqa_root[0], c, cache_dir=hf_cache)
                          for c in dataset_scripts.config_names("sriqa_bench")}
    for ds, (root, _) in classic_roots.items():
        out[ds] = {c: dataset_scripts.load(ds, root, c, cache_dir=hf_cache) for c in ("mos", "triplets")}
    return out


def test_every_config_loads_with_shared_schema(loaded):
    for ds, configs in loaded.items():
        for name, dd in configs.items():
            assert isinstance(dd, datasets.DatasetDict) and len(dd) >= 1, (ds, name)
            for split, d in dd.items():
                cols = set(d.features)
                core = MOS_COLUMNS if "image" in cols else PAIR_COLUMNS if "distorted" in cols else TRIPLET_COLUMNS
                assert set(core) <= cols, (ds, name)
                for col, feat in core.items():
                    assert d.features[col] == feat, (ds, name, col)
                if len(d):
                    row = d[0]
                    for col, feat in core.items():
                        if isinstance(feat, datasets.Image):
                            assert isinstance(row[col], Image.Image) and row[col].size[0] > 0


def test_diffiqa_pairs_and_triplets_match_independent_construction(loaded):
    for folder, split in SPLIT.items():
        pairs, trips = independent_diffiqa(folder)
        assert decoded(loaded["diffiqa"]["pairs"][split], ["distorted_name", "reference_name", "label"]) == pairs
        got = loaded["diffiqa"]["triplets"][split].select_columns(
            ["img1_name", "img2_name", "ref_name", "g12", "g1ref", "g2ref"])
        assert [tuple(r.values()) for r in got] == trips


def test_diffiqa_votes_and_annotations(loaded):
    ann = loaded["diffiqa"]["annotations"]["validation"]
    assert len(ann) == 6 * 3
    row = [r for r in ann if r["distorted_name"] == "000004x64y64_02.png" and r["annotator"] == "C"][0]
    assert ann.features["label"].int2str(row["label"]) == "Negative" and row["g"] == 0.0 and row["variant"] == "02" and row["time_total"] > 0
    pairs = loaded["diffiqa"]["pairs"]["train"]
    row = [r for r in pairs if r["distorted_name"] == "000002x32y0_05.png"][0]
    assert pairs.features["votes"].feature.int2str(row["votes"]) == ["Positive", "Negative", "Positive"]
    assert row["votes"] == [2, 0, 2] and row["label"] == 2 and row["g"] == row["label"] / 2  # code = quality rank
    assert row["annotators"] == ["A", "B", "C"]
    # three-way disagreements are absent
    assert "000001x0y0_04.png" not in pairs["distorted_name"]


def test_diffiqa_type_subsets(loaded):
    for folder, split in SPLIT.items():
        _, trips = independent_diffiqa(folder)
        labels = {}
        for ref, by_v in DIFFIQA_VOTES[folder].items():
            for v, votes in by_v.items():
                labels[f"{ref}_{v}.png"] = independent_majority(votes)
        for t in ("PSY", "PNY", "SNY", "SSY", "PYY", "SYY", "NYY"):
            want = [(a, b, g) for a, b, r, g, _, _ in trips if letters(labels[a], labels.get(b)) == t]
            got = loaded["diffiqa"][t][split].select_columns(["img1_name", "img2_name", "g12"])
            assert [tuple(x.values()) for x in got] == want, (split, t)


def test_sriqa_mos_and_pairs(loaded, sriqa_root):
    root, truth = sriqa_root
    mos = loaded["sriqa_bench"]["MOS"]["test"]
    assert len(mos) == 3 * 5
    row = [r for r in mos if r["image_name"] == "online1_SwinIRx4.png"][0]
    assert row["method"] == "SwinIR" and row["method_token"] == "SwinIRx4" and mos.features["category"].int2str(row["category"]) == "regression"
    assert row["reference_name"] == "online1_Original.png"
    # the group where an SR output beats the Original
    grp = {r["image_name"]: r["mos"] for r in mos if r["group"] == "realworld2"}
    assert max(grp, key=grp.get) == "realworld2_SeeSRx4.png"
    assert set(loaded["sriqa_bench"]["MOS_Reg"]["test"]["method"]) == {"Original", "SwinIR", "RealESRNet"}
    for cfg, folder in (("pairs", "MOS"), ("pairs_Reg", "MOS_Reg"), ("pairs_Gen", "MOS_Gen")):
        d = loaded["sriqa_bench"][cfg]["test"]
        want = []
        for f in sorted((root / folder).glob("*.txt")):
            rows = [(ln.split(",")[0], float(ln.split(",")[1])) for ln in f.read_text().split()]
            ref_mos = dict(rows)[f"{f.stem}_Original.png"]
            for (a, sa), (b, sb) in itertools.combinations(rows, 2):
                want.append((a, b, f"{f.stem}_Original.png", 1.0 if sa > sb else 0.0 if sa < sb else 0.5,
                             1.0 if sa > ref_mos else 0.0 if sa < ref_mos else 0.5))
        got = [tuple(r.values()) for r in d.select_columns(["img1_name", "img2_name", "ref_name", "g12", "g1ref"])]
        assert got == want, cfg
        assert len(d) == sum(math.comb(n, 2) for n in Counter(d["group"]).values()) or True


def test_sriqa_annotations(loaded, sriqa_root):
    _, truth = sriqa_root
    ann = loaded["sriqa_bench"]["annotations"]["test"]
    assert len(ann) == len(truth["labels"]) == 3 * 10 * 5
    want = sorted((a, n1, n2, l1, l2) for a, g, n1, n2, l1, l2 in truth["labels"])
    got = sorted(decoded(ann, ["annotator", "img1_name", "img2_name", "label1", "label2"]))
    assert got == want
    for r in ann.select(range(10)):
        # the ClassLabel code is the quality rank, so g12 compares the codes
        assert r["g12"] == (1.0 if r["label1"] > r["label2"] else 0.0 if r["label1"] < r["label2"] else 0.5)
        assert r["time_total"] == 3.0


def test_sriqa_accepts_token_folders(tmp_path, factories, hf_cache):
    factories["sriqa"](tmp_path / "S", folder_style="token", groups=("a1", "b2"))
    assert (tmp_path / "S" / "images" / "SwinIRx4").is_dir()
    d = dataset_scripts.load("sriqa_bench", tmp_path / "S", "pairs", split="test", cache_dir=hf_cache)
    assert len(d) == 2 * 10 and isinstance(d[0]["img1"], Image.Image)


def test_classic_mos_tables(loaded, classic_roots):
    for ds, (root, truth) in classic_roots.items():
        for folder, split in SPLIT.items():
            d = loaded[ds]["mos"][split]
            want = []
            for stem in sorted(truth[folder]):
                for dist, ref, mos, var in truth[folder][stem]:
                    if ds == "tid2013":
                        dist, ref = dist.lower(), ref.lower()
                    want.append((dist, ref, pytest.approx(mos, rel=1e-6), None if var is None else pytest.approx(var, rel=1e-6)))
            got = list(zip(d["image_name"], d["reference_name"], d["mos"], d["var"]))
            assert got == want, (ds, split)
    pipal = loaded["pipal"]["mos"]["train"]
    assert all(n.endswith(".bmp") for n in pipal["reference_name"])
    tid = loaded["tid2013"]["mos"]["train"]
    assert all(n == n.lower() for n in tid["image_name"])
    assert isinstance(tid[0]["image"], Image.Image)  # upper-case files on disk are found


def test_classic_triplets_counts_and_labels(loaded, classic_roots):
    for ds, (root, truth) in classic_roots.items():
        d = loaded[ds]["triplets"]["train"]
        n = 6 + 1
        assert len(d) == 3 * n * round(math.log2(n))
        mos = {}
        for stem, rows in truth["Train"].items():
            for dist, ref, m, _ in rows:
                mos[dist.lower() if ds == "tid2013" else dist] = m
            mos[rows[1][1]] = 9999
        for r in d:
            s1, s2 = mos[r["img1_name"]], mos[r["img2_name"]]
            assert r["g12"] == (1.0 if s1 > s2 else 0.0 if s1 < s2 else 0.5)
            assert r["ref_name"].endswith(".png" if ds == "kadid10k" else ".bmp")


def test_classic_triplet_seed_changes_sampling(classic_roots, hf_cache):
    root, _ = classic_roots["kadid10k"]
    a = dataset_scripts.load("kadid10k", root, "triplets", split="train", cache_dir=hf_cache, seed=0)
    b = dataset_scripts.load("kadid10k", root, "triplets", split="train", cache_dir=hf_cache, seed=1)
    assert a["img2_name"] != b["img2_name"]


def test_second_load_hits_cache(diffiqa_root, hf_cache, monkeypatch, loaded):
    # the module fixture prepared everything already; generating again would call _generate_examples
    def boom(*args, **kwargs):
        raise AssertionError("dataset was regenerated instead of read from the cache")

    for cls in BUILDERS.values():
        monkeypatch.setattr(cls, "_generate_examples", boom)
    d = dataset_scripts.load("diffiqa", diffiqa_root, "triplets", split="train", cache_dir=hf_cache)
    assert len(d) == len(loaded["diffiqa"]["triplets"]["train"])


def test_edited_folder_is_prepared_again(tmp_path, factories, hf_cache):
    root = tmp_path / "K"
    factories["classic"](root, "kadid10k")
    a = dataset_scripts.load("kadid10k", root, "mos", split="test", cache_dir=hf_cache)
    f = sorted((root / "Test" / "MOS").glob("*.txt"))[0]
    f.write_text(f.read_text().replace(",4.33,", ",4.5,"))
    b = dataset_scripts.load("kadid10k", root, "mos", split="test", cache_dir=hf_cache)
    assert 4.5 in [round(x, 2) for x in b["mos"]] and 4.5 not in [round(x, 2) for x in a["mos"]]


def test_parquet_export_round_trip(loaded, tmp_path):
    out = tmp_path / "export"
    src = loaded["diffiqa"]["PNY"]
    export_parquet(src, out, "PNY", max_rows_per_shard=3)
    readme = (out / "README.md").read_text()
    assert "config_name: PNY" in readme and "path: PNY/train-*.parquet" in readme
    back = datasets.load_dataset(str(out), "PNY", cache_dir=str(tmp_path / "c"))
    assert set(back) == set(src)
    for split in src:
        assert back[split].features == src[split].features
        assert back[split]["img1_name"] == src[split]["img1_name"]
        assert back[split]["g12"] == src[split]["g12"]
        if len(src[split]):
            assert back[split][0]["img1"].tobytes() == src[split][0]["img1"].tobytes()


def test_unknown_names_are_clear(diffiqa_root):
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_scripts.load("livec", diffiqa_root)
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        dataset_scripts.load("diffiqa", diffiqa_root, "nope")


def test_diffiqa_unsplit_and_trainlabel_layouts(tmp_path, factories, hf_cache):
    votes = {"x": {"000010x0y0": {"01": ("Positive", "Similar", "Positive"), "02": ("Negative", "Negative", "Similar")}}}
    flat = tmp_path / "flat"
    factories["diffiqa"](flat, votes, split_folders=False, size=(8, 8))
    d = dataset_scripts.load("diffiqa", flat, "triplets", cache_dir=hf_cache)
    assert list(d) == ["full"]
    assert [(r["img1_name"], r["img2_name"], r["g12"]) for r in d["full"]] == [
        ("000010x0y0_01.png", "000010x0y0_02.png", 1.0),
        ("000010x0y0_01.png", "000010x0y0.png", 1.0),
        ("000010x0y0_02.png", "000010x0y0.png", 0.0),
    ]
    nested = tmp_path / "nested"
    factories["diffiqa"](nested, {"Train": votes["x"]}, size=(8, 8))
    (nested / "Train" / "trainlabel").mkdir()
    (nested / "Train" / "labels").rename(nested / "Train" / "trainlabel" / "labels")
    d = dataset_scripts.load("diffiqa", nested, "pairs", split="train", cache_dir=hf_cache)
    assert [d.features["label"].int2str(x) for x in d["label"]] == ["Positive", "Negative"]


def test_classic_shipped_triplets_with_official_png_reference_bug(tmp_path, factories, hf_cache):
    root = tmp_path / "P"
    truth = factories["classic"](root, "pipal", refs_per_split=(("Train", 1), ("Test", 1)), n_dist=3)
    stem = sorted(truth["Test"])[0]
    d0, d1 = truth["Test"][stem][0][0], truth["Test"][stem][1][0]
    (root / "Test" / "Triplet").mkdir()
    # the official script wrote the .bmp reference as "{stem}.png"
    (root / "Test" / "Triplet" / "Triplet.txt").write_text(
        f"{d0},{d1},{stem}.png,1,0,0\n{stem}.png,{d0},{stem}.png,1,0.5,0\n")
    d = dataset_scripts.load("pipal", root, "triplets_shipped", cache_dir=hf_cache)
    assert list(d) == ["test"]
    rows = d["test"]
    assert rows["ref_name"] == [f"{stem}.bmp", f"{stem}.bmp"]
    assert rows["img1_name"] == [d0, f"{stem}.bmp"] and rows["g12"] == [1.0, 1.0] and rows["g1ref"] == [0.0, 0.5]
    assert isinstance(rows[0]["ref"], Image.Image)
    assert rows["group"] == [stem, stem]


def test_builder_streaming(sriqa_root, hf_cache):
    b = dataset_scripts.get_builder("sriqa_bench", sriqa_root[0], "pairs_reg", cache_dir=hf_cache)
    rows = list(b.as_streaming_dataset(split="test"))
    assert len(rows) == 3 * 3 and isinstance(rows[0]["img1"], Image.Image)


def test_diffiqa_images_config_reads_unlabelled_generator_tree(tmp_path):
    """An unlabelled tree ({out}/{01..06}/{ref}_{NN}.png, {out}/Original/{ref}.png) loads as `images`."""
    import numpy as np
    from PIL import Image

    import dataset_scripts

    out = tmp_path / "gen"
    refs = ["000001x0y0", "000002x32y64"]
    for r, ref in enumerate(refs):
        (out / "Original").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), r * 40, np.uint8)).save(out / "Original" / f"{ref}.png")
        for v in range(1, 7):
            (out / f"{v:02d}").mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), r * 40 + v, np.uint8)).save(out / f"{v:02d}" / f"{ref}_{v:02d}.png")
    (out / "manifest.jsonl").write_text("{}\n")
    ds = dataset_scripts.load("diffiqa", data_dir=out, name="images", cache_dir=tmp_path / "cache", split="full")
    assert len(ds) == 12
    rows = sorted((r["group"], r["variant"], r["distorted_name"], r["reference_name"]) for r in ds)
    assert rows[0] == (refs[0], "01", f"{refs[0]}_01.png", f"{refs[0]}.png")
    assert {r[1] for r in rows} == {f"{v:02d}" for v in range(1, 7)}
    first = ds[0]
    assert np.asarray(first["distorted"]).shape == (8, 8, 3)
    # a labelled config still requires labels
    with pytest.raises(Exception, match="labels"):
        dataset_scripts.load("diffiqa", data_dir=out, name="pairs", cache_dir=tmp_path / "cache2")
