"""The checker finds every planted defect in one report; builders fail with that report."""

import json
import shutil

import pytest

import dataset_scripts
from dataset_scripts.check import check
from dataset_scripts.cli import main as cli_main
from dataset_scripts.problems import DatasetCheckError


def kinds_at(report):
    return {(p.kind, p.path) for p in report.problems}


def has(report, kind, path_part, msg_part=""):
    return any(p.kind == kind and path_part.lower() in p.path.lower() and msg_part.lower() in p.message.lower()
               for p in report.problems)


def test_clean_fixtures_pass(diffiqa_root, sriqa_root, classic_roots):
    assert check(diffiqa_root).ok
    assert check(sriqa_root[0]).ok
    for ds, (root, _) in classic_roots.items():
        assert check(root, ds).ok, check(root, ds).format()


def test_diffiqa_every_defect_reported(tmp_path, factories):
    root = tmp_path / "D"
    factories["diffiqa"](root)
    tr = root / "Train"
    (tr / "images" / "02" / "000001x0y0_02.png").unlink()                         # missing image
    (tr / "images" / "03" / "000002x32y0_03.png").write_bytes(b"not a png")         # unreadable
    (tr / "labels" / "B" / "01" / "000003x0y64_01.json").write_text("{ broken")     # malformed JSON
    f = tr / "labels" / "C" / "04" / "000003x0y64_04.json"                          # out-of-vocabulary label
    data = json.loads(f.read_text())
    data["Picture_AI"]["Label"] = "Better"
    f.write_text(json.dumps(data))
    (root / "Test" / "labels" / "A" / "05" / "000005x0y32_05.json").unlink()         # wrong label count
    factories["image"](root / "Test" / "images" / "06" / "000006x32y32_06.png", size=(20, 16))  # size mismatch
    report = check(root)
    assert has(report, "missing_image", "000001x0y0_02.png")
    assert has(report, "wrong_count", "images", "group 000001x0y0 has 5 enhanced images")
    assert has(report, "unreadable_image", "000002x32y0_03.png")
    assert has(report, "malformed_label", "B/01/000003x0y64_01.json", "not valid JSON")
    assert has(report, "bad_label", "C/04/000003x0y64_04.json", "'Better'")
    assert has(report, "wrong_count", "labels/A", "000005x0y32: annotator A has no label for variant(s) 05")
    assert has(report, "size_mismatch", "000006x32y32_06.png", "20x16")
    assert len(report.problems) == 7, report.format()
    # builders refuse with the full (pixel-free) report; an annotator's absent label does not block (it is
    # warned about and that annotator left out of the vote, see test_annotators.py)
    with pytest.raises(DatasetCheckError) as err:
        dataset_scripts.load("diffiqa", root, "pairs", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    for part in ("000001x0y0_02.png", "000003x0y64_01.json", "'Better'"):
        assert part in msg
    assert "variant(s) 05" not in msg
    assert len(err.value.report.problems) == 4  # unreadable/size need decoding


def test_sriqa_every_defect_reported(tmp_path, factories):
    root = tmp_path / "S"
    factories["sriqa"](root)
    (root / "images" / "BSRGAN" / "online1_BSRGANx4.png").unlink()                     # missing image
    (root / "images" / "SeeSR" / "srtest3_SeeSRx4.png").write_bytes(b"\x89PNG garbage")  # unreadable
    lab = sorted((root / "labels" / "B" / "realworld2").glob("*.json"))
    lab[0].write_text("[]")                                                          # malformed (not an object)
    data = json.loads(lab[1].read_text())
    data["Picture_02"]["Label"] = "Great"                                            # out of vocabulary
    lab[1].write_text(json.dumps(data))
    lab[2].unlink()                                                                  # wrong pair count
    mos = root / "MOS" / "srtest3.txt"
    mos.write_text("".join(mos.read_text().splitlines(keepends=True)[:-1]))           # wrong MOS count
    factories["image"](root / "images" / "SwinIR" / "realworld2_SwinIRx4.png", size=(8, 8))  # size mismatch
    report = check(root)
    # one problem for the missing image, however many MOS/label files name it
    missing = [p for p in report.problems if p.kind == "missing_image"]
    assert len(missing) == 1 and missing[0].path.endswith("images/BSRGAN/online1_BSRGANx4.png")
    assert "named by 22 MOS/label file(s)" in missing[0].message  # MOS/ + MOS_Gen/ + 5 annotators x 4 pairs
    assert has(report, "unreadable_image", "srtest3_SeeSRx4.png")
    assert has(report, "malformed_label", lab[0].name, "JSON object")
    assert has(report, "bad_label", lab[1].name, "'Great'")
    assert has(report, "wrong_count", "labels/B/realworld2", "expected 10")
    assert has(report, "wrong_count", "MOS/srtest3.txt", "4 MOS lines, expected 5")
    assert has(report, "size_mismatch", "realworld2_SwinIRx4.png", "8x8")
    assert has(report, "wrong_count", "images", "group online1 has 4 images, expected 5")
    assert len(report.problems) == 8, report.format()  # 7 planted defects + the short group they cause
    with pytest.raises(DatasetCheckError):
        dataset_scripts.load("sriqa_bench", root, "MOS", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("ds", ["kadid10k", "pipal", "tid2013"])
def test_classic_every_defect_reported(tmp_path, factories, ds):
    root = tmp_path / ds
    truth = factories["classic"](root, ds)
    images = {p.name.lower(): p for p in (root / "images").iterdir()}
    first_train = sorted(truth["Train"])[0]
    dist0 = truth["Train"][first_train][1][0].lower()
    images[dist0].unlink()                                                           # missing image
    dist1 = truth["Train"][first_train][2][0].lower()
    images[dist1].write_bytes(b"garbage")                                            # unreadable
    test_stem = sorted(truth["Test"])[0]
    f = root / "Test" / "MOS" / f"{test_stem}.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-2] + [lines[-2].rsplit(",", 1)[0] + ",abc" if ds != "kadid10k"
                                         else lines[-2].split(",")[0] + ",x,y,z,w"]) + "\n")  # malformed line
    val_stem = sorted(truth["Validation"])[0]
    g = root / "Validation" / "MOS" / f"{val_stem}.txt"
    g.write_text("".join(g.read_text().splitlines(keepends=True)[:-1]))              # wrong count
    dist2 = truth["Train"][sorted(truth["Train"])[1]][0][0].lower()
    factories["image"](images[dist2], size=(10, 10), fmt="BMP" if ds != "kadid10k" else "PNG")  # size mismatch
    report = check(root, ds)
    assert has(report, "missing_image", f"{first_train}.txt", dist0)
    assert has(report, "unreadable_image", dist1)
    assert has(report, "malformed_label", f"Test/MOS/{test_stem}.txt")
    assert has(report, "wrong_count", f"Validation/MOS/{val_stem}.txt", "5 MOS lines, expected 6")
    assert has(report, "size_mismatch", images[dist2].name, "10x10")
    assert len(report.problems) == 5, report.format()


def test_check_cli_exit_codes_and_json(tmp_path, diffiqa_root, factories, capsys):
    assert cli_main(["check", str(diffiqa_root), "--quiet"]) == 0
    root = tmp_path / "D"
    shutil.copytree(diffiqa_root, root)
    (root / "Train" / "images" / "Original" / "000001x0y0.png").unlink()
    capsys.readouterr()
    assert cli_main(["check", str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problems"][0]["kind"] == "missing_image"
    assert cli_main(["check", str(tmp_path / "nowhere")]) == 1
    assert cli_main(["check"]) == 2
    assert cli_main(["check", str(diffiqa_root), "--dataset", "livec"]) == 2
    # a builder-backed command on a broken folder: report, exit 1, no traceback
    capsys.readouterr()
    assert cli_main(["prepare", "diffiqa", str(root), "--config", "pairs", "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "missing_image" in err and "Traceback" not in err


def test_tools_do_not_import_torch(tmp_path, factories):
    import subprocess
    import sys
    from pathlib import Path

    factories["classic"](tmp_path / "K", "kadid10k", refs_per_split=(("Train", 1),), n_dist=2)
    code = (
        "import sys, dataset_scripts\n"
        "from dataset_scripts.cli import main\n"
        f"rc = main(['check', {str(tmp_path / 'K')!r}, '--dataset', 'kadid10k', '--quiet'])\n"
        "bad = [m for m in ('torch', 'transformers', 'diffusers', 'gradio', 'accelerate') if m in sys.modules]\n"
        "assert rc == 0 and not bad, (rc, bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
