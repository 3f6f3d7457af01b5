"""The evaluate metric gives exactly AfineScorer.score's numbers, accumulates batches and rejects bad input."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
from PIL import Image

import spaces

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


@pytest.fixture(scope="module")
def metric(tiny_model_dir):
    m = evaluate.load(spaces.METRIC_PATH, model=str(tiny_model_dir), device="cpu", batch_size=2)
    return m


def _expected(scorer, dis, ref):
    out = scorer.score(dis, ref)
    return {f: [float(v) for v in getattr(out, f)] for f in FIELDS}


def test_load_metric_helper_path_is_absolute_and_loads():
    assert spaces.METRIC_PATH.startswith("/") and spaces.METRIC_PATH.endswith("metrics/afine")
    m = spaces.load_metric()
    assert m.name == "afine"
    assert set(m.features) == {"predictions", "references"}


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
    combined = evaluate.combine([spaces.load_metric()])
    out = combined.compute(predictions=[pngs["strong"]], references=[pngs["ref"]], model=str(tiny_model_dir),
                           device="cpu")
    assert out["score"][0] == pytest.approx(float(scorer.score(pngs["strong"], pngs["ref"]).score[0]), abs=1e-5)


def test_injected_scorer_is_used(scorer, pngs):
    m = spaces.load_metric()
    m.scorer = scorer
    out = m.compute(predictions=[pngs["mild"]], references=[pngs["ref"]])
    assert out["score"][0] == pytest.approx(float(scorer.score(pngs["mild"], pngs["ref"]).score[0]), abs=1e-5)


def test_mismatched_counts_and_sizes_raise(metric, pngs):
    with pytest.raises(ValueError):
        metric.compute(predictions=[pngs["mild"], pngs["strong"]], references=[pngs["ref"]])
    with pytest.raises(ValueError, match="same size|resize_reference"):
        metric.compute(predictions=[pngs["mild"]], references=[pngs["odd"]])


def test_resize_reference_option(tiny_model_dir, scorer, pngs):
    m = spaces.load_metric(model=str(tiny_model_dir), device="cpu", resize_reference=True)
    out = m.compute(predictions=[pngs["mild"]], references=[pngs["odd"]])
    exp = scorer.score(pngs["mild"], [pngs["odd"]], resize_reference=True)
    assert out["score"][0] == pytest.approx(float(exp.score[0]), abs=1e-5)
