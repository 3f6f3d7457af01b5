"""The evaluate metric gives exactly AfineScorer.score's numbers, accumulates batches and rejects bad input."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
from PIL import Image

from modeling_afine.image_io import ImageLoadError, load_image

from .conftest import SPACES

METRIC_FILE = str(SPACES / "afine" / "afine.py")
FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


@pytest.fixture(scope="module")
def metric(tiny_model_dir):
    return evaluate.load(METRIC_FILE, model=str(tiny_model_dir), device="cpu", batch_size=2)


def load_metric(**kwargs):
    return evaluate.load(METRIC_FILE, **kwargs)


def _expected(scorer, dis, ref):
    out = scorer.score(dis, ref)
    return {f: [float(v) for v in getattr(out, f)] for f in FIELDS}


def test_metric_loads_and_the_package_ships_the_same_module():
    m = load_metric()
    assert m.name == "afine"
    assert set(m.features) == {"predictions", "references"}
    from afine_apps.metric_cache import metric_source

    assert metric_source().read_bytes() == (SPACES / "afine" / "afine.py").read_bytes()


def test_compute_matches_scorer_paths_pil_arrays(metric, scorer, pngs):
    dis = [pngs["mild"], pngs["strong"], pngs["dis2"]]
    ref = [pngs["ref"], pngs["ref"], pngs["ref2"]]
    expected = _expected(scorer, dis, ref)
    # three input kinds: paths, PIL images, uint8 arrays
    for kind in ("path", "pil", "array"):
        conv = {"path": lambda p: p, "pil": lambda p: Image.open(p), "array": lambda p: np.asarray(Image.open(p))}[kind]
        out = metric.compute(predictions=[conv(p) for p in dis], references=[conv(p) for p in ref])
        for f in FIELDS:
            np.testing.assert_allclose(out[f], expected[f], rtol=1e-5, atol=1e-5, err_msg=f"{kind}/{f}")
            assert math.isclose(out["mean_" + f], float(np.mean(expected[f])), rel_tol=1e-5, abs_tol=1e-5)
    assert all(0.0 <= s <= 100.0 for s in out["score"])
    assert all(-2.0 <= v <= 2.0 for f in ("fidelity", "naturalness_distorted", "naturalness_reference") for v in out[f])


def test_order_matters_predictions_are_the_test_images(metric, scorer, pngs):
    swapped = metric.compute(predictions=[pngs["ref"]], references=[pngs["strong"]])
    assert swapped["score"][0] == pytest.approx(float(scorer.score(pngs["ref"], pngs["strong"]).score[0]), abs=1e-5)
    straight = metric.compute(predictions=[pngs["strong"]], references=[pngs["ref"]])
    assert straight["naturalness_distorted"][0] == pytest.approx(swapped["naturalness_reference"][0], abs=1e-5)


def test_add_batch_and_add_accumulate(metric, scorer, pngs):
    expected = _expected(scorer, [pngs["mild"], pngs["strong"], pngs["dis2"]], [pngs["ref"], pngs["ref"], pngs["ref2"]])
    metric.add_batch(predictions=[pngs["mild"], pngs["strong"]], references=[pngs["ref"], pngs["ref"]])
    metric.add(prediction=pngs["dis2"], reference=pngs["ref2"])
    out = metric.compute()
    np.testing.assert_allclose(out["score"], expected["score"], rtol=1e-5, atol=1e-5)
    assert out["mean_fidelity"] == pytest.approx(float(np.mean(expected["fidelity"])), abs=1e-5)


def test_combine_and_compute_kwargs(tiny_model_dir, scorer, pngs):
    combined = evaluate.combine([load_metric()])
    out = combined.compute(predictions=[pngs["strong"]], references=[pngs["ref"]], model=str(tiny_model_dir),
                           device="cpu")
    assert out["score"][0] == pytest.approx(float(scorer.score(pngs["strong"], pngs["ref"]).score[0]), abs=1e-5)


def test_injected_scorer_is_used(scorer, pngs):
    m = load_metric()
    m.scorer = scorer
    out = m.compute(predictions=[pngs["mild"]], references=[pngs["ref"]])
    assert out["score"][0] == pytest.approx(float(scorer.score(pngs["mild"], pngs["ref"]).score[0]), abs=1e-5)


def test_mismatched_counts_and_sizes_raise(metric, pngs):
    with pytest.raises(ValueError):
        metric.compute(predictions=[pngs["mild"], pngs["strong"]], references=[pngs["ref"]])
    with pytest.raises(ValueError, match="same size|resize_reference"):
        metric.compute(predictions=[pngs["mild"]], references=[pngs["odd"]])


def test_resize_reference_option(tiny_model_dir, scorer, pngs):
    m = load_metric(model=str(tiny_model_dir), device="cpu", resize_reference=True)
    out = m.compute(predictions=[pngs["mild"]], references=[pngs["odd"]])
    exp = scorer.score(pngs["mild"], [pngs["odd"]], resize_reference=True)
    assert out["score"][0] == pytest.approx(float(exp.score[0]), abs=1e-5)


@pytest.mark.parametrize("case", ["missing", "not_an_image", "truncated", "directory"])
def test_bad_files_raise_the_loaders_error_naming_the_file(metric, pngs, tmp_path, case):
    """The metric decodes with modeling_afine.load_image: same error type and message as the CLI."""
    bad = tmp_path / f"{case}.png"
    if case == "not_an_image":
        bad.write_text("hello")
    elif case == "truncated":
        bad.write_bytes(open(pngs["ref"], "rb").read()[:200])
    elif case == "directory":
        bad.mkdir()
    with pytest.raises(ImageLoadError) as direct:
        load_image(str(bad))
    with pytest.raises(ImageLoadError) as info:
        metric.compute(predictions=[str(bad)], references=[pngs["ref"]])
    assert str(bad) in str(info.value)
    assert str(info.value) == str(direct.value)
    with pytest.raises(ImageLoadError, match=str(bad)):
        metric.compute(predictions=[pngs["mild"]], references=[str(bad)])


def test_oversized_image_is_refused_before_decoding(metric, pngs):
    with pytest.raises(ImageLoadError, match=f"{pngs['mild']}: .*exceeds the limit of 1,024"):
        metric.compute(predictions=[pngs["mild"]], references=[pngs["ref"]], max_pixels=32 * 32)
    with pytest.raises(ImageLoadError) as direct:
        load_image(pngs["mild"], max_pixels=32 * 32)
    with pytest.raises(ImageLoadError) as info:
        metric.compute(predictions=[pngs["mild"]], references=[pngs["ref"]], max_pixels=32 * 32)
    assert str(info.value) == str(direct.value)


def test_metric_page_via_client(metric, scorer, pngs, monkeypatch):
    from gradio_client import Client, handle_file

    from afine_apps.metric_widget import build_metric_widget

    from .conftest import free_port

    demo = build_metric_widget(metric, SPACES / "afine" / "README.md")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        out = client.predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False, api_name="/compute")
        assert out["score"][0] == pytest.approx(float(scorer.score(pngs["strong"], pngs["ref"]).score[0]), abs=1e-5)
        monkeypatch.setenv("AFINE_MAX_IMAGE_PIXELS", str(32 * 32))
        with pytest.raises(Exception, match="exceeds the limit of 1,024"):
            client.predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False, api_name="/compute")
    finally:
        demo.close()


def test_in_memory_bad_bytes_are_named_by_position(metric, pngs):
    with pytest.raises(ImageLoadError, match=r"predictions\[0\]"):
        metric.compute(predictions=[b"not an image"], references=[pngs["ref"]])
