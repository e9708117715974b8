"""Seed statistics: t-distribution confidence intervals and Welch's t-test against the baseline.

Why these choices: sweeps run 2-5 seeds per variant, far too few for a normal approximation, so intervals use
Student's t with n-1 degrees of freedom. Variants change throughput and stability, so their seed variance need
not match the baseline's; Welch's test (no equal-variance assumption) is the honest default. No
multiple-comparison correction is applied: a table of k variants at alpha = 0.05 expects ~0.05 k false
"helped/hurt" verdicts, which the table caption states.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 1.0 - ALPHA


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    delta: float
    "mean(variant) - mean(baseline); negative = lower loss"
    p_value: float
    "two-sided Welch p; NaN when either side has fewer than two values"
    ci_half_width: float
    "half-width of the 95% CI of delta (Welch-Satterthwaite df); NaN when untestable"
    num_variant: int
    num_baseline: int

    @property
    def testable(self) -> bool:
        return self.num_variant >= 2 and self.num_baseline >= 2


def _clean(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def mean_ci(values: object, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the two-sided t interval); the half-width is NaN for a single value."""
    array = _clean(values)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan
    sem = float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, float(stats.t.ppf(0.5 + confidence / 2, array.size - 1)) * sem


def welch(variant: object, baseline: object, confidence: float = CONFIDENCE) -> Comparison:
    """Compare a variant's seeds with the baseline's; only the delta is defined with one seed on a side."""
    a, b = _clean(variant), _clean(baseline)
    if a.size == 0 or b.size == 0:
        return Comparison(delta=math.nan, p_value=math.nan, ci_half_width=math.nan, num_variant=int(a.size),
                          num_baseline=int(b.size))
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Comparison(delta=delta, p_value=math.nan, ci_half_width=math.nan, num_variant=int(a.size),
                          num_baseline=int(b.size))
    with warnings.catch_warnings():
        # identical seeds (deterministic runs) trip scipy's precision warning; the result is still right:
        # p = 0 for distinct constants, NaN for equal ones
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Comparison(delta=delta, p_value=p_value, ci_half_width=_welch_half_width(a, b, confidence),
                      num_variant=int(a.size), num_baseline=int(b.size))


def _welch_half_width(a: np.ndarray, b: np.ndarray, confidence: float) -> float:
    var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return 0.0
    df = (var_a + var_b) ** 2 / (var_a**2 / (a.size - 1) + var_b**2 / (b.size - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, df)) * se


def significant(comparison: Comparison, alpha: float = ALPHA) -> bool:
    # NaN p (both sides constant and equal) is "no evidence of a difference", never significant
    return comparison.testable and bool(comparison.p_value < alpha)
