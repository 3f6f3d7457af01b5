"""Calibration fits: recovery of known logistic constants, MOS normalisation, the CLI on synthetic PIPAL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.datasets.conftest import make_classic, make_sriqa
from training.calibration import (
    apply_fit,
    fit_logistic_calibration,
    logistic_calibration,
    main,
    normalize_mos_100,
    normalize_mos_pm2,
)


@pytest.mark.parametrize("center,scale,high,low", [(4.9592, 21.5968, 2, -2), (-1.971, 2.3734, 100, 0), (0.5, 0.15, 2, -2)])
def test_fit_recovers_known_parameters(center, scale, high, low):
    rng = np.random.default_rng(0)
    x = rng.normal(center, 2.5 * scale, size=400)
    y = (high - low) / (1 + np.exp(-(x - center) / scale)) + low
    y_noisy = y + rng.normal(0, 0.002 * (high - low), size=x.size)
    fit = fit_logistic_calibration(x, y_noisy, high=high, low=low)
    assert fit.center == pytest.approx(center, abs=0.02 * scale)
    assert abs(fit.scale) == pytest.approx(scale, rel=0.02)
    assert fit.rmse < 0.005 * (high - low) and fit.n == 400
    exact = fit_logistic_calibration(x, y, high=high, low=low)
    assert exact.center == pytest.approx(center, abs=1e-5 * scale) and abs(exact.scale) == pytest.approx(scale, rel=1e-5)


def test_logistic_and_normalisation_hand_values():
    assert logistic_calibration([4.9592], 4.9592, 21.5968)[0] == pytest.approx(0.0)
    # the 0-100 mapping with the official constants: A = 0 -> 69.65 (spec §1.6)
    assert logistic_calibration([0.0], -1.9710, -2.3734, 100, 0)[0] == pytest.approx(69.65, abs=0.01)
    assert normalize_mos_pm2([1, 2, 3]).tolist() == pytest.approx([2, 0, -2])
    assert normalize_mos_100([10, 20, 30, 50]).tolist() == pytest.approx([100, 75, 50, 0])
    with pytest.raises(ValueError):
        normalize_mos_pm2([3, 3])


def test_naturalness_fit_cli_writes_json_and_model(tmp_path, converted_model, hf_cache, capsys):
    from modeling_afine import AfineImageProcessor, AfineModel

    root = tmp_path / "PIPAL"
    truth = make_classic(root, "pipal", size=(32, 32), n_dist=8, refs_per_split=(("Train", 2), ("Validation", 1), ("Test", 1)))
    out, target = tmp_path / "fit.json", tmp_path / "fitted-model"
    rc = main(["naturalness", "--model", str(converted_model), "--data-dir", str(root), "--output", str(out),
               "--write-model", str(target), "--cache-dir", str(hf_cache), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    fit = json.loads(out.read_text())
    assert fit["n"] == 16 and fit["dataset"] == "pipal" and fit["split"] == "train"

    # independent: raw u of each training image from the model, normalised PIPAL MOS, the same least squares
    model = AfineModel.from_pretrained(str(converted_model)).eval()
    proc = AfineImageProcessor.from_pretrained(str(converted_model))
    xs, ms = [], []
    for rows in truth["Train"].values():
        for d, _, mos, _ in rows:
            with torch.no_grad():
                xs.append(float(model.naturalness(proc.preprocess_images(str(root / "images" / d))).naturalness_raw[0]))
            ms.append(mos)
    m = np.array(ms)
    y = -((m - m.min()) / (m.max() - m.min()) * 4 - 2)
    rmse = np.sqrt(np.mean((logistic_calibration(xs, fit["natural_center"], fit["natural_scale"]) - y) ** 2))
    assert fit["rmse"] == pytest.approx(rmse, rel=1e-3, abs=1e-6)
    # the fit is a least-squares optimum: nudging either constant does not lower the error
    for dc, ds in ((1e-2, 0), (-1e-2, 0), (0, 1e-2), (0, -1e-2)):
        c, s = fit["natural_center"] + dc * abs(fit["natural_scale"]), fit["natural_scale"] * (1 + ds)
        assert np.sqrt(np.mean((logistic_calibration(xs, c, s) - y) ** 2)) >= rmse - 1e-9

    fitted = AfineModel.from_pretrained(str(target))
    assert fitted.config.natural_center_init == pytest.approx(fit["natural_center"])
    assert float(fitted.natural_calibration.yita3.detach()) == pytest.approx(fit["natural_center"], rel=1e-6)
    assert float(fitted.natural_calibration.yita4.detach()) == pytest.approx(fit["natural_scale"], rel=1e-6)
    assert (target / "preprocessor_config.json").is_file()


def test_score_fit_on_sriqa_and_apply(tmp_path, converted_model, hf_cache):
    from modeling_afine import AfineModel

    root = tmp_path / "SRIQA"
    make_sriqa(root, size=(32, 32))
    out = tmp_path / "score.json"
    assert main(["score", "--model", str(converted_model), "--data-dir", str(root), "--output", str(out),
                 "--cache-dir", str(hf_cache), "--no-progress"]) == 0
    fit = json.loads(out.read_text())
    assert fit["n"] == 15 and fit["range"] == [100.0, 0.0]
    model = AfineModel.from_pretrained(str(converted_model))
    apply_fit(model, fit)
    assert model.config.score_center == fit["score_center"] and model.config.score_scale == fit["score_scale"]
    a = torch.tensor([fit["score_center"]])
    assert float(model.scale_score(a)[0]) == pytest.approx(50.0)


def test_cli_errors(tmp_path, converted_model, capsys):
    assert main(["bogus", "--model", "x", "--data-dir", "y"]) == 2
    assert main(["naturalness", "--model", str(converted_model), "--data-dir", str(tmp_path / "missing"), "--no-progress"]) == 1
    assert "missing" in capsys.readouterr().err
