"""2AFC accuracy and correlations against hand-computed cases and scipy."""

import numpy as np
import pytest
from scipy import stats

from dataset_scripts.agreement import fit_logistic4, krcc, logistic4, plcc, srcc, two_afc_accuracy, two_afc_correct


def test_two_afc_lower_is_better_official_rule():
    s1 = [0.1, 0.9, 0.5, 0.5, 0.2, 0.3]
    s2 = [0.5, 0.2, 0.5, 0.6, 0.1, 0.3]
    g = [1, 0, 0.5, 0.5, 1, 0]
    # pair: 1 correct (s1<s2, g=1); 2 correct (s1>s2, g=0); 3 correct (exact tie, g=.5); 4 wrong (tie label,
    # scores differ); 5 wrong (s1>s2 but g=1); 6 wrong (equal scores, g=0)
    assert two_afc_correct(s1, s2, g).tolist() == [True, True, True, False, False, False]
    assert two_afc_accuracy(s1, s2, g) == pytest.approx(3 / 6)
    assert two_afc_accuracy(s1, s2, g, exclude_ties=True) == pytest.approx(2 / 4)


def test_two_afc_higher_is_better_and_delta():
    s1, s2, g = [10.0, 3.0, 5.0], [2.0, 4.0, 5.05], [1, 0, 0.5]
    assert two_afc_accuracy(s1, s2, g, lower_is_better=False) == pytest.approx(2 / 3)
    assert two_afc_accuracy(s1, s2, g, lower_is_better=False, delta=0.1) == pytest.approx(1.0)
    # flipping the direction flips every decided pair
    assert two_afc_accuracy(s1, s2, [1, 0, 0], lower_is_better=True) == pytest.approx(0.0)


def test_two_afc_input_validation():
    with pytest.raises(ValueError, match="length"):
        two_afc_accuracy([1, 2], [1], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        two_afc_accuracy([np.nan], [1], [1])
    assert np.isnan(two_afc_accuracy([], [], []))


def test_correlations_match_scipy_with_direction():
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 40)
    lower_better = -mos + rng.normal(0, 10, 40)  # a lower-is-better metric
    assert srcc(lower_better, mos) == pytest.approx(stats.spearmanr(-lower_better, mos).statistic)
    assert srcc(lower_better, mos) > 0.8
    assert krcc(lower_better, mos) == pytest.approx(stats.kendalltau(-lower_better, mos).statistic)
    assert plcc(lower_better, mos) == pytest.approx(np.corrcoef(-lower_better, mos)[0, 1])
    assert srcc(-lower_better, mos, lower_is_better=False) == pytest.approx(srcc(lower_better, mos))
    assert np.isnan(srcc([1, 1, 1], [1, 2, 3]))


def test_plcc_logistic_recovers_sigmoid_relation():
    x = np.linspace(-3, 3, 60)
    mos = logistic4(x, 90.0, 10.0, 0.2, 0.7)
    assert plcc(x, mos, lower_is_better=False) < 0.99
    assert plcc(x, mos, lower_is_better=False, logistic=True) == pytest.approx(1.0, abs=1e-6)
    assert plcc(-x, mos, lower_is_better=True, logistic=True) == pytest.approx(1.0, abs=1e-6)
    b = fit_logistic4(x, mos)
    assert np.allclose(logistic4(x, *b), mos, atol=1e-4)
