"""The evaluate metric gives exactly AfineScorer.score's numbers, accumulates batches and rejects bad input."""

from __future__ import annotations

import math
import os

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
        with pytest.raises(Exception, match="exceeds the limit of 1,024") as err:
            client.predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False, api_name="/compute")
        msg = str(err.value)  # the upload name, no server path, no setting name
        assert "strong.png" in msg and "/" not in msg and "AFINE_" not in msg and "max_pixels" not in msg
        monkeypatch.delenv("AFINE_MAX_IMAGE_PIXELS")
        # server paths in every form, sent as raw JSON (gradio_client would upload a local file itself):
        # refused, whether or not the file exists, and nothing of the file comes back
        import httpx

        uploaded = client.predict(handle_file(pngs["ref"]), handle_file(pngs["ref"]), False, api_name="/compute")
        ref_upload = sorted(demo.upload_file_set)[0]
        meta = {"_type": "gradio.FileData"}
        for forged in ({"path": pngs["strong"]}, {"path": pngs["strong"], "meta": meta},
                       {"path": pngs["strong"] + ".missing", "meta": meta}, pngs["strong"], "file://" + pngs["strong"],
                       {"path": os.path.join(os.path.dirname(ref_upload), "..", "..", pngs["strong"][1:]), "meta": meta}):
            with httpx.Client(base_url=url, timeout=60) as http:
                event = http.post("gradio_api/call/compute",
                                  json={"data": [forged, {"path": ref_upload, "meta": meta}, False]})
                if event.status_code == 200:
                    text = http.get(f"gradio_api/call/compute/{event.json()['event_id']}").text
                else:
                    text = event.text
            assert "event: complete" not in text and '"score"' not in text, (forged, text)
            assert pngs["strong"] not in text and "event: error" in text, (forged, text)
        assert uploaded["score"][0] == pytest.approx(float(scorer.score(pngs["ref"], pngs["ref"]).score[0]), abs=1e-5)
    finally:
        demo.close()


def test_metric_page_errors_show_html_as_text():
    from afine_apps.launching import client_message as _client_text

    text = _client_text("/tmp/gradio/ab12/<img src=x onerror=alert(1)>.png: not an image",
                        ["/tmp/gradio/ab12/<img src=x onerror=alert(1)>.png"])
    assert text == "&lt;img src=x onerror=alert(1)&gt;.png: not an image"
    text = _client_text("/tmp/gradio/ab/x.png: image is 64x64 (WxH) = 4,096 pixels, which exceeds the limit of "
                        "1,024 pixels (a decompression bomb, or a huge image): set AFINE_MAX_IMAGE_PIXELS (or "
                        "max_pixels=) to a larger number to read it", ["/tmp/gradio/ab/x.png"])
    assert text == "x.png: image is 64x64 (WxH) = 4,096 pixels, which exceeds the limit of 1,024 pixels (a decompression bomb, or a huge image)"


def test_in_memory_bad_bytes_are_named_by_position(metric, pngs):
    with pytest.raises(ImageLoadError, match=r"predictions\[0\]"):
        metric.compute(predictions=[b"not an image"], references=[pngs["ref"]])


# ------------------------------------------------------------------ inputs the scorer accepts (issue 17, item 6)


def _kinds(path):
    """The same image as every input kind AfineScorer accepts."""
    import torch

    rgb = np.asarray(Image.open(path).convert("RGB"))
    return {
        "float_hwc": rgb.astype(np.float64) / 255.0,
        "float32_hwc": rgb.astype(np.float32) / 255.0,
        "uint8_hwc": rgb,
        "uint16_hwc": rgb.astype(np.uint16) * 257,
        "gray_float_hw": rgb[..., 0].astype(np.float32) / 255.0,
        "torch_chw_float": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,
        "torch_chw_uint8": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "pil_rgb": Image.fromarray(rgb),
        "pil_rgba": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        "path": path,
    }


def test_compute_accepts_what_the_scorer_accepts(metric, scorer, pngs):
    dis, ref = _kinds(pngs["strong"]), _kinds(pngs["ref"])
    # a float image that is not 8-bit: the metric must not quantise it (the scorer does not)
    dis["float_hwc"] = np.clip(dis["float_hwc"] + 0.001, 0, 1)
    for kind in dis:
        expected = _expected(scorer, [dis[kind]], [ref[kind]])
        out = metric.compute(predictions=[dis[kind]], references=[ref[kind]])
        for f in FIELDS:
            assert out[f] == pytest.approx(expected[f], abs=1e-6), (kind, f)
    # mixed kinds in one call, and a 4-D batch tensor
    import torch

    mixed = metric.compute(predictions=[dis["float_hwc"], dis["torch_chw_float"], dis["pil_rgb"]],
                           references=[ref["path"], ref["uint8_hwc"], ref["torch_chw_uint8"]])
    assert mixed["score"] == pytest.approx(_expected(scorer, [dis["float_hwc"], dis["torch_chw_float"], dis["pil_rgb"]],
                                                     [ref["path"], ref["uint8_hwc"], ref["torch_chw_uint8"]])["score"], abs=1e-6)
    batch = torch.stack([dis["torch_chw_float"], dis["torch_chw_float"]])
    out = metric.compute(predictions=batch, references=[ref["path"], ref["path"]])
    assert out["score"] == pytest.approx([mixed["score"][1]] * 2, abs=1e-6)
    metric.add(prediction=dis["torch_chw_float"], reference=ref["float_hwc"])
    metric.add_batch(predictions=[dis["pil_rgba"]], references=[ref["pil_rgba"]])
    out = metric.compute()
    assert out["score"] == pytest.approx(_expected(scorer, [dis["torch_chw_float"], dis["pil_rgba"]],
                                                   [ref["float_hwc"], ref["pil_rgba"]])["score"], abs=1e-6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 3, 16, 16, 2), np.float32), r"predictions: got one ndarray of shape \(4, 3, 16, 16, 2\)"),
    ([np.zeros((16, 16, 3), np.int32)], r"predictions\[0\]: got a numpy array of shape \(16, 16, 3\) and dtype int32"),
    ([np.zeros(16, np.float32)], r"predictions\[0\]: got a numpy array of shape \(16,\)"),
    ([object()], r"predictions\[0\]: got object; expected a file path"),
    ([{"pixels": 1}], r"predictions\[0\]: got dict"),
    ("one.png", r"predictions: got one str; expected a list of images"),
])
def test_refusals_are_one_line_without_the_data(metric, pngs, bad, match):
    with pytest.raises(ValueError, match=match) as err:
        metric.compute(predictions=bad, references=[pngs["ref"]])
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400 and "0." not in msg and "[[" not in msg


def test_lazily_opened_broken_pil_image_is_named(metric, pngs, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(open(pngs["ref"], "rb").read()[:300])
    with pytest.raises(ImageLoadError, match=r"^predictions\[0\]: cannot decode image"):
        metric.compute(predictions=[Image.open(broken)], references=[pngs["ref"]])


def test_torch_refusal_is_one_line(metric, pngs):
    import torch

    with pytest.raises(ValueError, match=r"predictions\[0\]: got a torch tensor of shape \(1, 3, 8, 8\)") as err:
        metric.compute(predictions=[torch.zeros(1, 3, 8, 8)], references=[pngs["ref"]])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="dtype torch.int64"):
        metric.compute(predictions=[torch.zeros(3, 8, 8, dtype=torch.long)], references=[pngs["ref"]])


def test_failed_computations_leave_no_cache_files(tiny_model_dir, pngs, tmp_path):
    """evaluate writes the inputs to an Arrow file (and a lock) in its cache and deletes them only after a
    successful compute; a failure must not leave them behind (nor hold a lock that forces a new file name)."""
    cache = tmp_path / "metrics"
    m = load_metric(model=str(tiny_model_dir), device="cpu", cache_dir=str(cache))
    files = lambda: sorted(p.name for p in cache.rglob("*") if p.is_file())  # noqa: E731
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    failures = [
        dict(predictions=[str(bad)], references=[pngs["ref"]]),                 # the loader refuses (in _compute)
        dict(predictions=[pngs["mild"]], references=[pngs["odd"]]),             # size mismatch (in the scorer)
        dict(predictions=[pngs["mild"], pngs["mild"]], references=[pngs["ref"]]),  # counts
        dict(predictions=[object()], references=[pngs["ref"]]),                # input kind
    ]
    for kwargs in failures * 2:
        with pytest.raises(ValueError):
            m.compute(**kwargs)
        assert files() == [], kwargs
    m.add_batch(predictions=[pngs["mild"]], references=[pngs["ref"]])
    with pytest.raises(ValueError):
        m.add_batch(predictions=[pngs["strong"]], references=[str(bad)])  # stored, fails at compute
        m.compute()
    assert files() == []
    out = m.compute(predictions=[pngs["mild"]], references=[pngs["ref"]])  # still works, same numbers
    assert len(out["score"]) == 1
    assert [f for f in files() if f.endswith(".arrow")] == []
