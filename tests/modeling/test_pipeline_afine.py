"""``transformers.pipeline("image-quality-assessment")``: registered by the package, shipped in every converted
folder, and giving ``AfineScorer``'s numbers for paths, PIL images and numpy arrays (issue 16, item 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, pipeline

import modeling_afine  # noqa: F401  (registers the task)
from modeling_afine import AfineModel, AfineScorer, ImageLoadError
from modeling_afine.pipeline_afine import PAIR_FIELDS, TASK, ImageQualityAssessmentPipeline

from ..blocked_packages import BLOCK_PROJECT
from .conftest import degrade

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipe(converted_dir):
    return pipeline(TASK, model=str(converted_dir), device="cpu")


@pytest.fixture(scope="module")
def scorer(model):
    return AfineScorer(model, batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def images(photos, tmp_path_factory):
    """Two references of different sizes with distortions of each, as arrays and as PNG paths."""
    d = tmp_path_factory.mktemp("pipeline_images")
    arrays = {
        "ref_a": photos["chelsea_96x160"],
        "dis_a1": degrade(photos["chelsea_96x160"], 2, noise=3, seed=1),
        "dis_a2": degrade(photos["chelsea_96x160"], 4, noise=8, seed=2),
        "ref_b": photos["coffee_70x100"],
        "dis_b1": degrade(photos["coffee_70x100"], 3, noise=5, seed=3),
    }
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(arr).save(paths[name])
    return arrays, paths


def _expected(scorer, distorted, references, **kwargs) -> list[dict[str, float]]:
    out = scorer.score(distorted, references, **kwargs)
    return [{f: float(getattr(out, f)[i]) for f in PAIR_FIELDS} for i in range(len(distorted))]


def _assert_same(got, expected):
    assert isinstance(got, type(expected)) and len(got) == len(expected)
    for g, e in zip(got if isinstance(got, list) else [got], expected if isinstance(expected, list) else [expected]):
        assert sorted(g) == sorted(e), (g, e)
        assert all(type(v) is float for v in g.values()), g
        torch.testing.assert_close(torch.tensor([g[k] for k in sorted(e)]), torch.tensor([e[k] for k in sorted(e)]),
                                   rtol=1e-5, atol=1e-5)


def test_registered_locally_and_shipped_in_the_folder(converted_dir, pipe):
    from transformers.pipelines import PIPELINE_REGISTRY

    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is ImageQualityAssessmentPipeline
    assert type(pipe) is ImageQualityAssessmentPipeline and type(pipe.model) is AfineModel
    assert type(pipe.image_processor).__module__ == "modeling_afine.image_processing_afine"
    # the folder names its own copy of the pipeline for use without the package ...
    saved = json.loads((converted_dir / "config.json").read_text())["custom_pipelines"]
    assert saved == {TASK: {"impl": "pipeline_afine.ImageQualityAssessmentPipeline", "pt": ["AutoModel"],
                            "type": "image"}}
    assert (converted_dir / "pipeline_afine.py").read_text() == (ROOT / "modeling_afine" / "pipeline_afine.py").read_text()
    # ... which the package's config hides (the registered pipeline serves the task) but saves unchanged
    config = AutoConfig.from_pretrained(converted_dir)
    assert config.custom_pipelines == {} and config.to_dict()["custom_pipelines"] == saved


def test_one_pair_in_every_input_form(pipe, scorer, images, model):
    arrays, paths = images
    expected = _expected(scorer, [paths["dis_a1"]], paths["ref_a"])[0]
    assert len(set(expected.values())) == 5  # five different numbers, not a saturated model
    _assert_same(pipe(paths["dis_a1"], reference=paths["ref_a"]), expected)
    _assert_same(pipe(Path(paths["dis_a1"]), reference=Path(paths["ref_a"])), expected)
    _assert_same(pipe(arrays["dis_a1"], reference=arrays["ref_a"]), expected)
    _assert_same(pipe(Image.fromarray(arrays["dis_a1"]), reference=Image.open(paths["ref_a"])), expected)
    _assert_same(pipe({"distorted": paths["dis_a1"], "reference": arrays["ref_a"]}), expected)
    # float arrays in [0, 1] are the same image
    _assert_same(pipe(arrays["dis_a1"] / 255.0, reference=arrays["ref_a"].astype(np.float32) / 255), expected)
    # a model object instead of a folder: the processor is built from its config
    from_model = pipeline(TASK, model=model, device="cpu")
    assert type(from_model.image_processor).__name__ == "AfineImageProcessor"
    _assert_same(from_model(paths["dis_a1"], reference=paths["ref_a"]), expected)


def test_list_of_pairs_in_batches(pipe, scorer, images):
    arrays, paths = images
    pairs = [
        ("dis_b1", "ref_b"), ("dis_a1", "ref_a"), ("ref_a", "ref_a"), ("dis_a2", "ref_a"), ("ref_b", "ref_b"),
    ]
    expected = _expected(scorer, [paths[d] for d, _ in pairs], [paths[r] for _, r in pairs])
    assert expected[0] != expected[1] and expected[2] != expected[4]
    inputs = [{"distorted": paths[d] if i % 2 else arrays[d], "reference": paths[r]} for i, (d, r) in enumerate(pairs)]
    for batch_size in (8, 2, 1):
        _assert_same(pipe(inputs, batch_size=batch_size), expected)
    # several distorted images against one reference
    shared = _expected(scorer, [paths["dis_a1"], paths["dis_a2"]], paths["ref_a"])
    _assert_same(pipe([paths["dis_a1"], arrays["dis_a2"]], reference=paths["ref_a"], batch_size=8), shared)
    assert pipe([], batch_size=8) == []


def test_no_reference_gives_the_naturalness(pipe, scorer, images):
    arrays, paths = images
    expected = scorer.naturalness([paths["dis_b1"], paths["ref_a"]])
    one = pipe(paths["dis_b1"])
    assert sorted(one) == ["naturalness"] and type(one["naturalness"]) is float
    assert one["naturalness"] == pytest.approx(float(expected[0]), rel=1e-5, abs=1e-5)
    mixed = pipe([arrays["ref_a"], {"distorted": paths["dis_b1"], "reference": paths["ref_b"]}, {"distorted": paths["dis_b1"]}],
                 batch_size=4)
    assert mixed[0]["naturalness"] == pytest.approx(float(expected[1]), rel=1e-5, abs=1e-5)
    _assert_same(mixed[1], _expected(scorer, [paths["dis_b1"]], paths["ref_b"])[0])
    assert mixed[2] == pytest.approx(one, rel=1e-5, abs=1e-5)


def test_resize_reference(pipe, scorer, images):
    arrays, paths = images
    small = arrays["ref_a"][:64, :128]
    with pytest.raises(ValueError, match="size mismatch") as err:
        pipe(paths["dis_a1"], reference=small)
    assert paths["dis_a1"] in str(err.value) and "resize_reference=True" in str(err.value)
    expected = _expected(scorer, [paths["dis_a1"]], small, resize_reference=True)[0]
    _assert_same(pipe(paths["dis_a1"], reference=small, resize_reference=True), expected)


def test_bad_input_gets_one_clear_error(pipe, images, tmp_path):
    arrays, paths = images
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="nope.png"):
        pipe(missing, reference=paths["ref_a"])
    with pytest.raises(ImageLoadError, match="nope.png"):
        pipe([{"distorted": paths["dis_a1"], "reference": missing}], batch_size=4)
    with pytest.raises(ValueError, match="needs the key 'distorted'"):
        pipe({"image": paths["dis_a1"]})
    with pytest.raises(ValueError, match="give one of them"):
        pipe({"distorted": paths["dis_a1"], "reference": paths["ref_a"]}, reference=paths["ref_a"])
    with pytest.raises(ValueError, match="one image, got a batch of 2"):
        pipe(np.stack([arrays["dis_a1"]] * 2), reference=arrays["ref_a"])
    with pytest.raises(TypeError, match="unexpected argument.*top_k"):
        pipe(paths["dis_a1"], top_k=3)


def test_refuses_a_model_that_is_not_afine():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=16))
    with pytest.raises(ValueError, match="needs an A-FINE model"):
        ImageQualityAssessmentPipeline(model=clip, device="cpu")


# ------------------------------------------------------------------ without the package (remote code)

_BLOCKED = BLOCK_PROJECT + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from transformers import pipeline

    sources, dis, ref, dis2, ref2 = sys.argv[1].split(","), *sys.argv[2:6]
    report = {}
    try:
        pipeline("image-quality-assessment", model=sources[0])
        report["without_trust"] = "loaded"
    except ValueError as exc:
        report["without_trust"] = str(exc)
    for source in sources:
        pipe = pipeline("image-quality-assessment", model=source, trust_remote_code=True, device="cpu")
        report[source] = {
            "classes": [type(x).__module__ for x in (pipe, pipe.model, pipe.image_processor)],
            "pair": pipe(dis, reference=ref),
            "arrays": pipe(np.load(dis2), reference=np.load(ref2)),
            "batch": pipe([{"distorted": dis, "reference": ref}, {"distorted": np.load(dis2), "reference": np.load(ref2)}],
                          batch_size=8),
            "naturalness": pipe(ref),
        }
    report["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("\\nREPORT", json.dumps(report))  # on its own line: the refused trust prompt leaves text on stdout
    """
)


def test_without_the_package_from_a_folder_and_a_hub_repo(converted_dir, scorer, images, tmp_path):
    """``trust_remote_code=True`` runs the folder's own pipeline, model and processor code, in a process where
    the project cannot be imported, from the folder and from a Hub repository (a cache entry, offline)."""
    arrays, paths = images
    commit = "0123abcd" * 5  # transformers keys remote code on the commit hash: 40 hex digits
    snapshot = tmp_path / "hub" / "models--someorg--afine-tiny" / "snapshots" / commit
    shutil.copytree(converted_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    np.save(tmp_path / "dis2.npy", arrays["dis_b1"])
    np.save(tmp_path / "ref2.npy", arrays["ref_b"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    work = tmp_path / "elsewhere"
    work.mkdir()
    sources = [str(converted_dir), "someorg/afine-tiny"]
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED, ",".join(sources), paths["dis_a1"], paths["ref_a"],
         str(tmp_path / "dis2.npy"), str(tmp_path / "ref2.npy")],
        cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.rsplit("\nREPORT ", 1)[1])
    assert report["leaked"] == []
    assert "trust_remote_code=True" in report["without_trust"]
    pair = _expected(scorer, [paths["dis_a1"]], paths["ref_a"])[0]
    second = _expected(scorer, [paths["dis_b1"]], paths["ref_b"])[0]
    natural = float(scorer.naturalness(paths["ref_a"])[0])
    for source in sources:
        got = report[source]
        assert all(m.startswith("transformers_modules.") for m in got["classes"]), got["classes"]
        assert got["classes"][0].endswith(".pipeline_afine")
        _assert_same(got["pair"], pair)
        _assert_same(got["arrays"], second)
        _assert_same(got["batch"], [pair, second])
        assert got["naturalness"]["naturalness"] == pytest.approx(natural, rel=1e-5, abs=1e-5)
