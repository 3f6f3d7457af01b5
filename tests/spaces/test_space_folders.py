"""Each folder in spaces/ is a Space repository: its card parses, names an existing app file, and ``python app.py``
serves on 127.0.0.1 and answers through gradio_client."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import SpaceCard, metadata_load

from .conftest import ROOT, SPACES, ServedApp, subprocess_env, textured

SPACE_DIRS = ("afine", "afine-demo", "afine-annotate")


def test_spaces_is_not_a_package():
    assert not list(SPACES.rglob("__init__.py"))
    assert sorted(p.name for p in SPACES.iterdir() if p.is_dir()) == sorted(SPACE_DIRS)


@pytest.mark.parametrize("name", SPACE_DIRS)
def test_card_front_matter(name):
    folder = SPACES / name
    meta = metadata_load(folder / "README.md")
    card = SpaceCard.load(folder / "README.md")
    assert card.data.to_dict() == meta
    assert meta["sdk"] == "gradio" and meta["sdk_version"].startswith("6.")
    assert (folder / meta["app_file"]).is_file()
    assert meta["license"] == "apache-2.0"
    assert {"title", "emoji", "colorFrom", "colorTo", "pinned"} <= set(meta)
    assert (folder / "requirements.txt").is_file()
    if name == "afine":  # evaluate's own metric Spaces
        assert {"evaluate", "metric"} <= set(meta["tags"]) and meta["description"]
    if name == "afine-demo":
        assert meta["models"] and 0 < len(meta["short_description"]) <= 60
    if "short_description" in meta:
        assert len(meta["short_description"]) <= 60


def test_requirements_cover_the_spaces_extra():
    """Each Space's requirements.txt installs what `afine-hf[spaces]` needs (setup.cfg is the source)."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    needed = [r for r in cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["spaces"].split("\n")
              if r.strip() and not r.startswith("torch")]
    for name in SPACE_DIRS:
        lines = {ln.strip() for ln in (SPACES / name / "requirements.txt").read_text().splitlines()}
        missing = [r for r in needed if r.strip() not in lines]
        assert not missing, (name, missing)
        assert any(re.match(r"torch==2\.13\.0$", ln) for ln in lines)


def test_demo_examples_are_the_repository_examples():
    for name in ("distorted.png", "reference.png"):
        assert (SPACES / "afine-demo" / "examples" / name).read_bytes() == (ROOT / "examples" / name).read_bytes()


@pytest.mark.slow
def test_metric_space_app_serves(tiny_model_dir, pngs, scorer):
    from gradio_client import Client, handle_file

    app = ServedApp(SPACES / "afine", subprocess_env(AFINE_MODEL=str(tiny_model_dir), AFINE_DEVICE="cpu"))
    try:
        assert '"/compute"' in app.info
        out = Client(app.url, verbose=False).predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False,
                                                     api_name="/compute")
    finally:
        app.close()
    assert out["score"][0] == pytest.approx(float(scorer.score(pngs["strong"], pngs["ref"]).score[0]), abs=1e-5)


@pytest.mark.slow
def test_demo_space_app_serves_with_examples(tiny_model_dir, pngs, scorer):
    from gradio_client import Client, handle_file

    app = ServedApp(SPACES / "afine-demo", subprocess_env(AFINE_MODEL=str(tiny_model_dir), AFINE_DEVICE="cpu"))
    try:
        for api in ("/score", "/compare", "/rank", "/naturalness"):
            assert f'"{api}"' in app.info
        result = Client(app.url, verbose=False).predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False,
                                                        api_name="/score")
    finally:
        app.close()
    assert result[0] == round(float(scorer.score(pngs["strong"], pngs["ref"]).score[0]), 4)


@pytest.mark.slow
def test_annotate_space_app_serves(tmp_path):
    from gradio_client import Client
    from PIL import Image

    data = tmp_path / "DiffIQA"
    (data / "images" / "Original").mkdir(parents=True)
    (data / "images" / "01").mkdir()
    Image.fromarray(textured(16, 16, 0)).save(data / "images" / "Original" / "r1.png")
    Image.fromarray(textured(16, 16, 1)).save(data / "images" / "01" / "r1_01.png")
    app = ServedApp(SPACES / "afine-annotate", subprocess_env(AFINE_ANNOTATE_DATA=str(data), AFINE_ANNOTATE_SEED="0",
                                                              AFINE_ANNOTATORS="A"))
    try:
        client = Client(app.url, verbose=False)
        assert "pair 1 of 1" in client.predict("A", api_name="/start")[2]
        assert "all 1 pairs are labelled" in client.predict("A", api_name="/answer_similar")[2]
    finally:
        app.close()
    label = json.loads((data / "labels" / "A" / "01" / "r1_01.json").read_text())
    assert label["Picture_AI"]["Label"] == "Similar"


@pytest.mark.slow
def test_staged_demo_folder_runs_alone(tiny_model_dir, tmp_path, pngs):
    """`stage-space` copies the Space and the package code; the copy serves from a folder outside the repo with
    only the venv's third-party packages (PYTHONPATH does not point at the repository)."""
    import subprocess
    import sys

    out = tmp_path / "staged-demo"
    subprocess.run([sys.executable, "-m", "afine_apps", "stage-space", str(SPACES / "afine-demo"), str(out)],
                   check=True, env=subprocess_env(), cwd=str(tmp_path))
    assert (out / "app.py").is_file() and (out / "modeling_afine" / "scoring.py").is_file()
    assert (out / "afine_apps" / "evaluate_metric.py").is_file() and not (out / "afine_apps" / "evaluate_metric.py").is_symlink()
    env = subprocess_env(AFINE_MODEL=str(tiny_model_dir), AFINE_DEVICE="cpu")
    env["PYTHONPATH"] = ""  # the staged copy must not need the repository
    check = subprocess.run([sys.executable, "-c", "import modeling_afine, afine_apps; print(modeling_afine.__file__)"],
                           cwd=str(out), env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip().startswith(str(out)), check.stdout
    app = ServedApp(out, env)
    try:
        assert '"/rank"' in app.info
    finally:
        app.close()
    shutil.rmtree(out)
