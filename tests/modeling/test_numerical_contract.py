"""The numerical contract: convert-then-AfineModel equals an independent implementation of spec §1."""

from __future__ import annotations

import pytest
import torch

from .conftest import HEADS, degrade
from .reference_afine import random_official_checkpoint, reference_afine

FIELDS = (
    "score",
    "score_raw",
    "fidelity",
    "naturalness_distorted",
    "naturalness_reference",
    "fidelity_raw",
    "naturalness_distorted_raw",
    "naturalness_reference_raw",
)


def to01(img) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


def assert_close(ours: float, ref: float, name: str, rel: float = 1e-5, abs_: float = 1e-6) -> None:
    assert abs(ours - ref) <= max(rel * abs(ref), abs_), f"{name}: ours={ours!r} reference={ref!r}"


@pytest.mark.parametrize("name", ["astronaut_224", "coffee_70x100", "chelsea_96x160", "rocket_130x75"])
def test_matches_independent_implementation(model, processor, official_parts, photos, name):
    ref_img = photos[name]
    dis_img = degrade(ref_img, factor=4, noise=3.0)
    with torch.no_grad():
        out = model(**processor(dis_img, ref_img))
    expected = reference_afine(official_parts, to01(dis_img), to01(ref_img), HEADS)
    for field in FIELDS:
        assert_close(float(getattr(out, field)[0]), expected[field], f"{name}.{field}")


def test_every_term_matters(model, processor, photos):
    """Guard against a weak contract test: the random weights must exercise every part of the formula."""
    refs = [photos["chelsea_96x160"], photos["chelsea_96x160"][::-1].copy(), degrade(photos["chelsea_96x160"], 8)]
    dis = [degrade(r, 2, noise=20.0, seed=i) for i, r in enumerate(refs)]
    with torch.no_grad():
        out = model(**processor(dis, refs))
    assert out.naturalness_distorted.std() > 0.05  # N varies between images
    assert out.fidelity.std() > 0.01
    assert ((out.adaptive_weight - 1).abs() > 0.05).any()  # the adaptive weight is not trivially 1
    # Both fidelity clamps are active in the fixture checkpoint (yita3=-0.3 -> 0.05, yita4=0.9 -> 0.70).
    assert model.fidelity_calibration.yita3.item() < 0.05 and model.fidelity_calibration.yita4.item() > 0.70


def test_unclamped_calibration_and_identity_pair(tmp_path, photos):
    """A second checkpoint with in-range calibration values; also D(x, x) ~ 0 and A(x, x) = N + F(0)."""
    from modeling_afine.convert_afine_checkpoint import build_model_from_official
    from modeling_afine import AfineImageProcessor

    parts = random_official_checkpoint(seed=3, fidelity_scale=(0.4, 0.2), natural_scale=(0.5, 2.0), k=1.5)
    model = build_model_from_official(parts)
    proc = AfineImageProcessor()
    img = photos["coffee_70x100"]
    dis = degrade(img, 3, noise=5.0)
    with torch.no_grad():
        out = model(**proc(dis, img))
        same = model(**proc(img, img))
    expected = reference_afine(parts, to01(dis), to01(img), HEADS)
    for field in FIELDS:
        assert_close(float(getattr(out, field)[0]), expected[field], field)
    assert abs(float(same.fidelity_raw[0])) < 1e-5
    n = float(same.naturalness_distorted[0])
    f0 = 4 * torch.sigmoid(torch.tensor((0.0 - 0.4) / 0.2)).item() - 2
    assert abs(float(same.score_raw[0]) - (n + f0)) < 1e-4


def test_official_batch1_branch_equals_sigmoid():
    """The official `exp_pow >= 10` branch and our sigmoid agree across the whole range."""
    from .reference_afine import official_logistic

    for x in (-1e3, -50.0, -1.0, 0.0, 3.0, 50.0, 1e3):
        ours = 100 * torch.sigmoid(torch.tensor((x + 1.9710) / 2.3734, dtype=torch.float64)).item()
        assert abs(ours - official_logistic(x, 100, 0, -1.9710, -2.3734)) < 1e-9
