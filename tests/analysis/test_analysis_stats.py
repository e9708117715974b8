import math

import numpy as np
import pytest
from scipy import stats as st

from analysis import stats


def test_mean_ci_matches_t_interval_by_hand():
    values = [2.50, 2.52, 2.48]
    mean, half = stats.mean_ci(values)
    sd = math.sqrt(((0.0) ** 2 + 0.02**2 + 0.02**2) / 2)  # deviations from 2.50
    assert mean == pytest.approx(2.50)
    assert half == pytest.approx(st.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) from a table


def test_mean_ci_single_value_has_no_interval_and_ignores_nan():
    mean, half = stats.mean_ci([2.4, float("nan")])
    assert mean == 2.4 and math.isnan(half)
    assert all(math.isnan(v) for v in stats.mean_ci([]))


def test_welch_matches_scipy():
    a, b = [2.40, 2.41, 2.39, 2.44], [2.50, 2.52, 2.48]
    result = stats.welch(a, b)
    reference = st.ttest_ind(a, b, equal_var=False)
    assert result.delta == pytest.approx(np.mean(a) - np.mean(b))
    assert result.p_value == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert result.ci_half_width == pytest.approx((high - low) / 2)
    assert result.testable and stats.significant(result)


def test_welch_with_one_seed_gives_delta_only():
    result = stats.welch([2.45], [2.50, 2.52, 2.48])
    assert result.delta == pytest.approx(-0.05)
    assert math.isnan(result.p_value) and not result.testable and not stats.significant(result)


def test_welch_constant_seeds():
    distinct = stats.welch([1.0, 1.0], [2.0, 2.0])
    assert distinct.p_value == 0.0 and stats.significant(distinct)
    equal = stats.welch([1.0, 1.0], [1.0, 1.0])
    assert not stats.significant(equal)
