"""``evaluate.load("afine")`` literally: from spaces/, from the repo root as "spaces/afine", and from any folder
offline after ``python -m afine_apps install-metric``; each in a fresh process, numbers equal AfineScorer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT, SPACES, subprocess_env

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")

CHILD = """
import json, sys
import evaluate
metric = evaluate.load(sys.argv[1], model=sys.argv[2], device="cpu", batch_size=2)
out = metric.compute(predictions=json.loads(sys.argv[3]), references=json.loads(sys.argv[4]))
out["module"] = type(metric).__module__
print("RESULT" + json.dumps(out))
"""


def _load_in_child(path, cwd, env, model, dis, ref):
    proc = subprocess.run([sys.executable, "-c", CHILD, path, str(model), json.dumps(dis), json.dumps(ref)],
                          cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):]), proc.stderr


@pytest.fixture(scope="module")
def case(scorer, pngs):
    dis, ref = [pngs["mild"], pngs["strong"], pngs["dis2"]], [pngs["ref"], pngs["ref"], pngs["ref2"]]
    out = scorer.score(dis, ref)
    return dis, ref, {f: [float(v) for v in getattr(out, f)] for f in FIELDS}


def _check(out, expected):
    for f in FIELDS:
        assert out[f] == pytest.approx(expected[f], abs=1e-5), f


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, where", [("afine", "spaces"), ("spaces/afine", "repo root")], ids=["afine-from-spaces", "spaces/afine-from-root"]
)
def test_literal_evaluate_load(name, where, tiny_model_dir, case, tmp_path):
    dis, ref, expected = case
    env = subprocess_env(HF_MODULES_CACHE=str(tmp_path / "modules"))
    out, err = _load_in_child(name, SPACES if where == "spaces" else ROOT, env, tiny_model_dir, dis, ref)
    assert out is not None, err
    _check(out, expected)


@pytest.mark.slow
def test_load_afine_anywhere_offline_after_install_metric(tiny_model_dir, case, tmp_path):
    from datasets.packaged_modules import _hash_python_lines

    dis, ref, expected = case
    elsewhere = tmp_path / "some" / "project"
    elsewhere.mkdir(parents=True)
    modules = tmp_path / "modules"
    env = subprocess_env(HF_MODULES_CACHE=str(modules))
    out, err = _load_in_child("afine", elsewhere, env, tiny_model_dir, dis, ref)
    assert out is None and "afine" in err  # not installed yet: evaluate cannot find it

    proc = subprocess.run([sys.executable, "-m", "afine_apps", "install-metric"], cwd=str(elsewhere), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # exactly what evaluate writes for a Hub metric evaluate-metric/afine: folder, __init__ files, metadata, hash
    source = (SPACES / "afine" / "afine.py").read_text(encoding="utf-8").splitlines(keepends=True)
    digest = _hash_python_lines(source)
    base = modules / "evaluate_modules"
    folder = base / "metrics" / "evaluate-metric--afine" / digest
    assert (folder / "afine.py").read_bytes() == (SPACES / "afine" / "afine.py").read_bytes()
    for init in (base, base / "metrics", base / "metrics" / "evaluate-metric--afine", folder):
        assert (init / "__init__.py").is_file(), init
    meta = json.loads((folder / "afine.json").read_text())
    assert meta["local file path"] == str(folder / "afine.py")

    out, err = _load_in_child("afine", elsewhere, env, tiny_model_dir, dis, ref)
    assert out is not None, err
    _check(out, expected)
    assert out["module"] == f"evaluate_modules.metrics.evaluate-metric--afine.{digest}.afine"


def test_install_metric_twice_is_idempotent(tmp_path):
    from afine_apps.metric_cache import install_metric

    first = install_metric(modules_cache=tmp_path / "m")
    second = install_metric(modules_cache=tmp_path / "m")
    assert first == second and first.is_file()
    assert len(list((tmp_path / "m" / "metrics" / "evaluate-metric--afine").iterdir())) == 2  # hash dir + __init__
    with pytest.raises(FileNotFoundError):
        install_metric(tmp_path / "nope.py", modules_cache=tmp_path / "m")
