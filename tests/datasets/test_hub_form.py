"""Robustness and Hub form of the builders: empty splits, stray MOS copies, view-scoped problems, the
Parquet + dataset-card export read back by ``datasets.load_dataset``, ``load`` options, ClassLabel columns,
cache reuse/re-preparing and the cost of the folder fingerprint."""

import json
import os
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import dataset_scripts
from dataset_scripts.builders import base as builder_base
from dataset_scripts.cli import main as data_main
from dataset_scripts.export import export_views
from dataset_scripts.formats import write_diffiqa_label
from dataset_scripts.problems import DatasetCheckError, DatasetProblemWarning
from dataset_scripts.schema import LABEL_NAMES, LABEL_RANK, LABEL_TO_G, TRIPLET_TYPES, triplet_features

from .conftest import DIFFIQA_VOTES

P, S, N = "Positive", "Similar", "Negative"

#: a validation folder without any two Similar images: its SSY split has no rows
VOTES_NO_SSY = {
    "Train": DIFFIQA_VOTES["Train"],
    "Validation": {"000004x64y64": {"01": (P, P, S), "02": (N, N, S), "03": (P, P, N), "04": (N, N, N)}},
}


@pytest.fixture(scope="module")
def no_ssy_root(tmp_path_factory):
    from .conftest import make_diffiqa

    root = tmp_path_factory.mktemp("DiffIQA_noSSY")
    make_diffiqa(root, VOTES_NO_SSY, size=(8, 8))
    return root


# ------------------------------------------------------------------------------------------- empty splits


def test_empty_split_loads_as_empty_dataset_with_the_view_features(no_ssy_root, tmp_path):
    dd = dataset_scripts.load("diffiqa", no_ssy_root, "SSY", cache_dir=tmp_path)
    assert list(dd) == ["train", "validation"]
    assert len(dd["train"]) > 0 and len(dd["validation"]) == 0
    assert dd["validation"].features == triplet_features() == dd["train"].features
    one = dataset_scripts.load("diffiqa", no_ssy_root, "SSY", split="validation", cache_dir=tmp_path)
    assert isinstance(one, datasets.Dataset) and len(one) == 0 and one.features == triplet_features()
    # the builder itself, used directly, does the same
    b = dataset_scripts.get_builder("diffiqa", no_ssy_root, "SSY", cache_dir=tmp_path)
    assert len(b.as_dataset(split="validation")) == 0
    # an unknown split still says which exist
    with pytest.raises(ValueError, match="train"):
        dataset_scripts.load("diffiqa", no_ssy_root, "SSY", split="test", cache_dir=tmp_path)


def test_empty_split_prepare_and_export_succeed(no_ssy_root, tmp_path, capsys):
    assert data_main(["prepare", "diffiqa", str(no_ssy_root), "--config", "SSY", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "validation: 0" in capsys.readouterr().out
    out = tmp_path / "out"
    assert data_main(["export", "diffiqa", str(no_ssy_root), str(out), "--config", "SSY",
                      "--cache-dir", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (out / "SSY").glob("*.parquet")) == ["train-00000-of-00001.parquet"]
    assert "Splits without rows (left out): `SSY`: validation" in (out / "README.md").read_text()
    back = datasets.load_dataset(str(out), "SSY", cache_dir=str(tmp_path / "c2"))
    assert list(back) == ["train"] and len(back["train"]) > 0


# ------------------------------------------------------------------------------------- stray MOS copies


def test_stray_copy_of_a_classic_mos_file_is_flagged_and_refused(tmp_path, factories):
    root = tmp_path / "PIPAL"
    truth = factories["classic"](root, "pipal", refs_per_split=(("Train", 2), ("Test", 1)), n_dist=4)
    stem = sorted(truth["Train"])[1]
    copy = root / "Train" / "MOS" / f"{stem} - Copy.txt"
    shutil.copy(root / "Train" / "MOS" / f"{stem}.txt", copy)
    report = dataset_scripts.check(root, "pipal", decode=False)
    msgs = [(p.kind, Path(p.path).name, p.message) for p in report.problems]
    assert ("inconsistent", copy.name, f"file name does not match its reference {stem}.bmp (expected {stem}.txt; "
            "a stray copy?)") in msgs
    dup = [m for m in msgs if "also listed in" in m[2]]
    assert len(dup) == 1 and dup[0][1] == copy.name and dup[0][2].startswith("4 image(s) also listed in ")
    assert str(root / "Train" / "MOS" / f"{stem}.txt") in dup[0][2]
    # load refuses with the same problems, instead of loading the 4 rows twice
    with pytest.raises(DatasetCheckError) as exc:
        dataset_scripts.load("pipal", root, "mos", cache_dir=tmp_path / "c")
    assert [str(p) for p in exc.value.report.problems] == [str(p) for p in report.problems]
    assert "a stray copy?" in str(exc.value)
    assert data_main(["check", str(root), "--dataset", "pipal", "--no-decode", "--quiet"]) == 1
    copy.unlink()
    assert len(dataset_scripts.load("pipal", root, "mos", split="train", cache_dir=tmp_path / "c")) == 2 * 4


def test_check_names_the_dataset_flag_when_it_cannot_guess(classic_roots, capsys):
    root, _ = classic_roots["kadid10k"]
    assert data_main(["check", str(root), "--no-decode"]) == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "kadid10k" in err
    report = dataset_scripts.check(root)
    assert not report.ok and "dataset=" in report.problems[0].message and "--dataset" in report.problems[0].message


# ------------------------------------------------------------------------------ problems scoped to views


def test_broken_sriqa_label_file_blocks_only_the_views_that_read_labels(tmp_path, factories):
    root = tmp_path / "S"
    factories["sriqa"](root, groups=("online1", "realworld2"), annotators="AB")
    broken = sorted((root / "labels" / "B" / "realworld2").glob("*.json"))[3]
    broken.write_text('{"Picture_01": {"Name": ')  # torn file
    cache = tmp_path / "c"
    for view, rows in (("MOS", 2 * 5), ("pairs", 2 * 10), ("MOS_Reg", 2 * 3)):
        with pytest.warns(DatasetProblemWarning, match=str(broken)) as rec:
            d = dataset_scripts.load("sriqa_bench", root, view, split="test", cache_dir=cache)
        assert len(d) == rows, view
        assert f"view {view!r} does not read labels" in str(rec[0].message)
    with pytest.raises(DatasetCheckError, match=str(broken)) as exc:
        dataset_scripts.load("sriqa_bench", root, "annotations", cache_dir=cache)
    assert [p.kind for p in exc.value.report.problems] == ["malformed_label"]
    # a broken MOS file blocks the MOS views but not the annotations
    broken.write_text(json.dumps({"Picture_01": {"Name": "realworld2_Original.png", "Label": P},
                                  "Picture_02": {"Name": "realworld2_SwinIRx4.png", "Label": N}}))
    (root / "MOS_Gen" / "online1.txt").write_text("online1_SeeSRx4.png,not-a-number\n")
    with pytest.raises(DatasetCheckError, match="online1.txt"):
        dataset_scripts.load("sriqa_bench", root, "pairs_Gen", cache_dir=cache)
    with pytest.warns(DatasetProblemWarning, match="online1.txt"):
        assert len(dataset_scripts.load("sriqa_bench", root, "MOS", split="test", cache_dir=cache)) == 10


def test_diffiqa_images_view_ignores_broken_labels(tmp_path, factories):
    root = tmp_path / "D"
    factories["diffiqa"](root, {"Test": DIFFIQA_VOTES["Test"]}, size=(8, 8))
    broken = root / "Test" / "labels" / "A" / "03" / "000005x0y32_03.json"
    broken.write_text("not json")
    with pytest.warns(DatasetProblemWarning, match=str(broken)):
        assert len(dataset_scripts.load("diffiqa", root, "images", split="test", cache_dir=tmp_path / "c")) == 12
    with pytest.raises(DatasetCheckError, match=str(broken)):
        dataset_scripts.load("diffiqa", root, "pairs", cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------------------- export round trip


def test_export_round_trips_through_load_dataset(diffiqa_root, tmp_path):
    out = tmp_path / "hub"
    cache = tmp_path / "c"
    export_views("diffiqa", diffiqa_root, out, ["triplets", "pairs"], cache_dir=cache, max_rows_per_shard=20)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "dataset_info:" in card and "configs:" in card
    for cfg in ("triplets", "pairs"):
        ours = dataset_scripts.load("diffiqa", diffiqa_root, cfg, cache_dir=cache)
        back = datasets.load_dataset(str(out), cfg, cache_dir=str(tmp_path / "c2"))
        assert list(back) == list(ours) == ["train", "validation", "test"]
        for split in ours:
            a, b = ours[split], back[split]
            assert b.features == a.features, (cfg, split)
            plain = [c for c, f in a.features.items() if not isinstance(f, datasets.Image)]
            assert b.select_columns(plain).to_list() == a.select_columns(plain).to_list()
            images = [c for c, f in a.features.items() if isinstance(f, datasets.Image)]
            for i in (0, len(a) - 1):
                for c in images:
                    assert np.array_equal(np.asarray(a[i][c]), np.asarray(b[i][c])), (cfg, split, i, c)
            # embedded: the export no longer points at the dataset folder
            raw = b.cast_column(images[0], datasets.Image(decode=False))[0][images[0]]
            assert raw["bytes"] and not str(raw.get("path") or "").startswith(str(diffiqa_root))
    # the dataset's default config is the default of the export
    default = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c2"))
    assert "votes" in default["train"].column_names
    assert len(list((out / "triplets").glob("train-*.parquet"))) == 3  # 41 rows, 20 per shard


# ----------------------------------------------------------------------------------------- load options


def test_streaming_and_num_proc_give_the_same_rows(classic_roots, tmp_path):
    root, _ = classic_roots["kadid10k"]
    ref = dataset_scripts.load("kadid10k", root, "triplets", split="train", cache_dir=tmp_path / "a")
    par = dataset_scripts.load("kadid10k", root, "triplets", split="train", cache_dir=tmp_path / "b", num_proc=2)
    names = ["group", "img1_name", "img2_name", "ref_name", "g12", "g1ref", "g2ref", "type"]
    assert len(ref) == 3 * 7 * 3 and ref.select_columns(names).to_list() == par.select_columns(names).to_list()
    stream = dataset_scripts.load("kadid10k", root, "triplets", split="train", cache_dir=tmp_path / "s", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    assert [{k: r[k] for k in names} for r in rows] == ref.select_columns(names).to_list()
    assert isinstance(rows[0]["img1"], Image.Image)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.arrow"))
    sd = dataset_scripts.load("kadid10k", root, "mos", cache_dir=tmp_path / "s", streaming=True)
    assert isinstance(sd, datasets.IterableDatasetDict) and list(sd) == ["train", "validation", "test"]


def test_in_place_edit_of_the_same_size_is_noticed(tmp_path, factories):
    root = tmp_path / "D"
    factories["diffiqa"](root, {"Test": {"000005x0y32": DIFFIQA_VOTES["Test"]["000005x0y32"]}}, size=(8, 8))
    cache = tmp_path / "c"
    first = dataset_scripts.load("diffiqa", root, "annotations", split="test", cache_dir=cache)
    label = root / "Test" / "labels" / "A" / "01" / "000005x0y32_01.json"
    row = lambda d: [r for r in d if r["annotator"] == "A" and r["variant"] == "01"][0]  # noqa: E731
    assert first.features["label"].int2str(row(first)["label"]) == P
    # rewritten in place (same file, no rename, same size: "Positive" and "Negative" have 8 letters), the
    # folder's mtime left as it was: the file's own mtime tells
    dir_mtime = os.stat(label.parent).st_mtime_ns
    size = label.stat().st_size
    text = label.read_text()
    assert f'"Label": "{P}"' in text
    with open(label, "r+", encoding="utf-8") as fh:
        fh.write(text.replace(f'"Label": "{P}"', f'"Label": "{N}"'))
    os.utime(label.parent, ns=(dir_mtime, dir_mtime))
    assert label.stat().st_size == size and os.stat(label.parent).st_mtime_ns == dir_mtime
    fresh = dataset_scripts.load("diffiqa", root, "annotations", split="test", cache_dir=cache)
    assert row(fresh)["label"] == LABEL_NAMES.index(N)
    # force_redownload still prepares again on demand
    forced = dataset_scripts.load("diffiqa", root, "annotations", split="test", cache_dir=cache,
                                  download_mode="force_redownload")
    assert row(forced)["label"] == LABEL_NAMES.index(N)
    # an atomic rewrite (this package's writers, the annotation app, most editors) is noticed by itself
    write_diffiqa_label(label, "000005x0y32_01.png", "000005x0y32.png", S, variant="01")
    again = dataset_scripts.load("diffiqa", root, "annotations", split="test", cache_dir=cache)
    assert row(again)["label"] == LABEL_NAMES.index(S)


# ------------------------------------------------------------------------------------------- ClassLabel


def test_fixed_vocabularies_are_classlabels(diffiqa_root, sriqa_root, classic_roots, hf_cache):
    pairs = dataset_scripts.load("diffiqa", diffiqa_root, "pairs", split="train", cache_dir=hf_cache)
    lab = pairs.features["label"]
    assert isinstance(lab, datasets.ClassLabel) and lab.names == ["Negative", "Similar", "Positive"]
    for r in pairs:
        name = lab.int2str(r["label"])
        assert r["label"] == LABEL_RANK[name] + 1 and r["g"] == LABEL_TO_G[name] == r["label"] / 2
    trip = dataset_scripts.load("diffiqa", diffiqa_root, "triplets", split="train", cache_dir=hf_cache)
    assert trip.features["type"].names == list(TRIPLET_TYPES)
    assert {trip.features["type"].int2str(t) for t in trip["type"]} == {"PSY", "PNY", "SNY", "SSY", "PYY", "SYY", "NYY"}
    kadid = dataset_scripts.load("kadid10k", classic_roots["kadid10k"][0], "triplets", split="test", cache_dir=hf_cache)
    assert {kadid.features["type"].int2str(t) for t in kadid["type"]} == {"NNY", "NYY"}
    sp = dataset_scripts.load("sriqa_bench", sriqa_root[0], "pairs", split="test", cache_dir=hf_cache)
    assert set(sp["type"]) == {None}
    mos = dataset_scripts.load("sriqa_bench", sriqa_root[0], "MOS", split="test", cache_dir=hf_cache)
    cat = mos.features["category"]
    assert cat.names == ["original", "regression", "generative"]
    assert {(r["method"], cat.int2str(r["category"])) for r in mos} >= {("Original", "original"), ("SwinIR", "regression"),
                                                                         ("SeeSR", "generative")}


# ---------------------------------------------------------------------------------------------- cache


def test_cache_is_reprepared_in_place_and_old_versions_are_removed(tmp_path, factories):
    root = tmp_path / "K"
    factories["classic"](root, "kadid10k", refs_per_split=(("Train", 2),), n_dist=3)
    cache = tmp_path / "c"
    assert len(dataset_scripts.load("kadid10k", root, "mos", split="train", cache_dir=cache)) == 6
    keys = list((cache / "kadid10k").iterdir())
    assert len([k for k in keys if k.is_dir()]) == 1
    key = [k for k in keys if k.is_dir()][0]
    old = key / "0.9.0" / "0_9_0"
    old.mkdir(parents=True)
    (old / "dataset_info.json").write_text("{}")
    # caches written before the fingerprint left the cache key: one per folder state, other keys
    legacy = cache / "kadid10k" / "mos-0123456789abcdef" / "1.0.0" / "1_0_0"
    legacy.mkdir(parents=True)
    (legacy / "dataset_info.json").write_text(json.dumps({"builder_name": "classic"}))
    foreign = cache / "kadid10k" / "default-0123" / "1.0.0" / "1_0_0"  # not ours: kept
    foreign.mkdir(parents=True)
    (foreign / "dataset_info.json").write_text(json.dumps({"builder_name": "somebody_else"}))
    # the folder changes: one group less (file removed) -> prepared again into the same cache folder
    (root / "Train" / "MOS" / "I02.txt").unlink()
    assert len(dataset_scripts.load("kadid10k", root, "mos", split="train", cache_dir=cache)) == 3
    assert sorted(k.name for k in (cache / "kadid10k").iterdir() if k.is_dir()) == sorted([key.name, "default-0123"])
    assert foreign.is_dir()
    assert not (key / "0.9.0").exists()
    assert sorted(p.name for p in key.iterdir()) == [builder_base.BUILDER_VERSION]
    marker = json.loads(next(key.rglob(builder_base.CACHE_MARKER)).read_text())
    assert marker["data_dir"] == str(root.resolve()) and marker["config"] == "mos"


# ------------------------------------------------------------------------------------------ fingerprint


class _CountingEntry:
    def __init__(self, entry, counter):
        self._e, self._c = entry, counter

    def __getattr__(self, name):
        return getattr(self._e, name)

    def stat(self, *a, **k):
        self._c["stat"] += 1
        return self._e.stat(*a, **k)


class _CountingScandir:
    def __init__(self, path, counter):
        self._it, self._c = os.scandir(path), counter
        counter["scandir"] += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._it.close()

    def __iter__(self):
        return (_CountingEntry(e, self._c) for e in self._it)


def test_fingerprint_stats_label_files_not_images(tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    n_dirs, per_dir = 6, 200
    for a in ("A", "B"):
        for v in ("01", "02", "03"):
            d = labels / a / v
            d.mkdir(parents=True)
            for i in range(per_dir):
                os.close(os.open(d / f"{i:06d}_{v}.json", os.O_CREAT | os.O_WRONLY))
    (labels / "notes.txt").write_text("x")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(50):
        os.close(os.open(images / f"{i}.png", os.O_CREAT | os.O_WRONLY))
    counter = {"stat": 0, "scandir": 0}
    real_stat = os.stat

    def counting_stat(*a, **k):
        counter["stat"] += 1
        return real_stat(*a, **k)

    monkeypatch.setattr(builder_base.os, "scandir", lambda p: _CountingScandir(p, counter))
    monkeypatch.setattr(builder_base.os, "stat", counting_stat)
    fp = builder_base.fingerprint_files([labels], [images])
    monkeypatch.undo()
    n_label_files = n_dirs * per_dir + 1
    folders = 1 + 2 + n_dirs + 1  # labels, A, B, six variant folders, images
    assert counter["scandir"] == folders
    # one stat per label file (its size and mtime; at most the two roots' is_dir besides); none per image
    assert n_label_files <= counter["stat"] <= n_label_files + 2

    def fp_now():
        return builder_base.fingerprint_files([labels], [images])

    assert fp_now() == fp
    # a label JSON replaced atomically (new file, same name)
    target = labels / "A" / "02" / "000007_02.json"
    tmp = target.with_name("x.tmp")
    tmp.write_text("{}")
    os.replace(tmp, target)
    assert fp_now() != fp
    fp = fp_now()
    # rewritten in place with the same size, the folder's mtime unchanged: the file's mtime tells
    dir_mtime, st = os.stat(target.parent).st_mtime_ns, target.stat()
    with open(target, "r+") as fh:
        fh.write("[]")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later tick, whatever the fs clock
    os.utime(target.parent, ns=(dir_mtime, dir_mtime))
    assert target.stat().st_size == st.st_size and fp_now() != fp
    fp = fp_now()
    (labels / "A" / "02" / "000008_02.json").unlink()  # removed
    assert fp_now() != fp
    fp = fp_now()
    (labels / "notes.txt").write_text("longer")  # text label files: size/mtime
    assert fp_now() != fp
    fp = fp_now()
    (images / "new.png").write_bytes(b"")  # image names
    assert fp_now() != fp
    fp = fp_now()
    os.utime(images / "new.png", ns=(1, 1))  # image mtimes do not count (pixels are read on access)
    assert fp_now() == fp


def test_edited_image_pixels_are_read_fresh_without_re_preparing(tmp_path, factories):
    """Why image files need no stat: prepared tables hold paths, and pixels are decoded on access."""
    root = tmp_path / "K"
    factories["classic"](root, "kadid10k", refs_per_split=(("Train", 1),), n_dist=2)
    d = dataset_scripts.load("kadid10k", root, "mos", split="train", cache_dir=tmp_path / "c")
    path = root / "images" / d[0]["image_name"]
    Image.fromarray(np.full((12, 16, 3), 7, np.uint8)).save(path)
    d2 = dataset_scripts.load("kadid10k", root, "mos", split="train", cache_dir=tmp_path / "c")
    assert np.asarray(d2[0]["image"]).max() == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset_scripts.load("kadid10k", root, "mos", split="train", cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------ import cost


def test_check_and_label_tools_import_neither_datasets_nor_torch(diffiqa_root, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dataset_scripts.cli import main\n"
        f"assert main(['check', {str(diffiqa_root)!r}, '--quiet']) == 0\n"
        f"assert main(['majority', {str(diffiqa_root)!r}, '--out-dir', {str(tmp_path / 'm')!r}]) == 0\n"
        f"assert main(['triplets', 'diffiqa', {str(diffiqa_root)!r}, '--out-dir', {str(tmp_path / 't')!r}]) == 0\n"
        "print(sorted(m for m in ('datasets', 'torch', 'transformers', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_problem_warning_is_repeated_on_cached_loads_and_printed_by_the_cli(tmp_path, factories, capsys):
    root = tmp_path / "S"
    factories["sriqa"](root, groups=("online1",), annotators="A")
    broken = sorted((root / "labels" / "A" / "online1").glob("*.json"))[0]
    broken.write_text("{")
    cache = tmp_path / "c"
    for _ in range(2):  # prepared, then read from the cache: reported both times
        with pytest.warns(DatasetProblemWarning, match=str(broken)):
            dataset_scripts.load("sriqa_bench", root, "MOS", cache_dir=cache)
    assert data_main(["prepare", "sriqa_bench", str(root), "--config", "MOS", "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert f"afine data prepare: warning: sriqa_bench at {root}: view 'MOS' does not read labels" in err
    assert str(broken) in err
    assert data_main(["prepare", "sriqa_bench", str(root), "--config", "annotations", "--cache-dir", str(cache)]) == 1
    assert str(broken) in capsys.readouterr().err
