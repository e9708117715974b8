"""Seed statistics: paired comparisons with the baseline, Holm over a sweep's comparisons, t or bootstrap CIs.

Why these choices:
- Trials of a sweep that share a seed share init, data order, masks and dropout draws (cram_core.rng), so a
  variant's seed-s loss minus the baseline's seed-s loss removes most of the seed-to-seed noise. Variants
  are therefore compared per seed: the paired t-test (`scipy.stats.ttest_rel`) and the t interval of the
  mean paired difference. Welch's test (`ttest_ind`, `equal_var=False`) is the fallback only where fewer
  than two seeds pair (a variant and a baseline run on different seeds).
- Sweeps run 2-5 seeds, far too few for a normal approximation: intervals use Student's t with n-1 df.
- A sweep makes k comparisons at once; at alpha = 0.05 unadjusted, ~0.05 k of them would be "significant"
  by chance. Holm's step-down (`statsmodels...multipletests`, method="holm") controls the family-wise
  error over the sweep's comparisons; verdicts use the adjusted p and tables show both.
- The bootstrap CI (`scipy.stats.bootstrap`, percentile) is offered as a check that does not assume normal
  differences; with 3 seeds it has only 10 distinct resampled means, so the t interval remains the default.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 1.0 - ALPHA
CI_METHODS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # the same store gives the same table


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    delta: float
    "mean paired difference (variant - baseline, per seed) or difference of means (Welch); negative = lower"
    p_value: float
    "two-sided p of the test named by `method`; NaN when untestable"
    ci_half_width: float
    "half-width of the 95% CI of delta; NaN when untestable"
    num_variant: int
    num_baseline: int
    method: str = "none"
    "paired (seeds pair), welch (fewer than two pairs) or none (a side has fewer than two values)"
    num_pairs: int = 0
    p_adjusted: float = math.nan
    "Holm-adjusted p over the sweep's comparisons (`holm`); NaN until adjusted or when untestable"
    ci_low: float = math.nan
    ci_high: float = math.nan
    "the CI's ends (equal to delta -/+ ci_half_width for t intervals; bootstrap ones need not be symmetric)"

    @property
    def testable(self) -> bool:
        return self.method != "none"


def _clean(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _t_quantile(confidence: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def mean_ci(values: object, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the two-sided t interval); the half-width is NaN for a single value."""
    array = _clean(values)
    if array.size == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan
    sem = float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, _t_quantile(confidence, array.size - 1) * sem


def _quiet_p(test: object, *args: np.ndarray, **kw: object) -> float:
    with warnings.catch_warnings():
        # identical seeds (deterministic runs) trip scipy's precision warning; the result is still right:
        # p = 0 for distinct constants, NaN for equal ones
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(test(*args, **kw).pvalue)  # type: ignore[operator]


def welch(variant: object, baseline: object, confidence: float = CONFIDENCE) -> Comparison:
    """Compare a variant's seeds with the baseline's as independent samples; delta only with one seed a side."""
    a, b = _clean(variant), _clean(baseline)
    sizes = {"num_variant": int(a.size), "num_baseline": int(b.size)}
    if a.size == 0 or b.size == 0:
        return Comparison(delta=math.nan, p_value=math.nan, ci_half_width=math.nan, **sizes)
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Comparison(delta=delta, p_value=math.nan, ci_half_width=math.nan, **sizes)
    p_value = _quiet_p(stats.ttest_ind, a, b, equal_var=False)
    half = _welch_half_width(a, b, confidence)
    return Comparison(delta=delta, p_value=p_value, ci_half_width=half, method="welch", ci_low=delta - half,
                      ci_high=delta + half, **sizes)


def _welch_half_width(a: np.ndarray, b: np.ndarray, confidence: float) -> float:
    var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return 0.0
    df = (var_a + var_b) ** 2 / (var_a**2 / (a.size - 1) + var_b**2 / (b.size - 1))
    return _t_quantile(confidence, df) * se


def _finite(by_seed: Mapping[int, float]) -> dict[int, float]:
    return {int(s): float(v) for s, v in by_seed.items() if v is not None and math.isfinite(float(v))}


def paired(variant: Mapping[int, float], baseline: Mapping[int, float],
           confidence: float = CONFIDENCE) -> Comparison:
    """Compare per seed ({seed: loss} on each side): paired t on the seeds both have, else Welch on all."""
    a, b = _finite(variant), _finite(baseline)
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        return welch(list(a.values()), list(b.values()), confidence)
    x = np.array([a[s] for s in seeds])
    y = np.array([b[s] for s in seeds])
    diffs = x - y
    delta = float(diffs.mean())
    half = mean_ci(diffs, confidence)[1]
    p_value = _quiet_p(stats.ttest_rel, x, y)
    return Comparison(delta=delta, p_value=p_value, ci_half_width=half, num_variant=len(a), num_baseline=len(b),
                      method="paired", num_pairs=len(seeds), ci_low=delta - half, ci_high=delta + half)


def paired_differences(variant: Mapping[int, float], baseline: Mapping[int, float]) -> np.ndarray:
    a, b = _finite(variant), _finite(baseline)
    return np.array([a[s] - b[s] for s in sorted(a.keys() & b.keys())])


def bootstrap_ci(comparison: Comparison, variant: Mapping[int, float], baseline: Mapping[int, float],
                 confidence: float = CONFIDENCE) -> Comparison:
    """The same comparison with a percentile-bootstrap CI: of the mean paired difference (paired) or of the
    difference of means, resampling each side independently (Welch); untestable comparisons are unchanged."""
    if comparison.method == "none":
        return comparison
    kw = {"confidence_level": confidence, "n_resamples": BOOTSTRAP_RESAMPLES, "method": "percentile",
          "rng": np.random.default_rng(BOOTSTRAP_SEED)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) samples: scipy warns and returns NaN
        if comparison.method == "paired":
            result = stats.bootstrap((paired_differences(variant, baseline),), np.mean, **kw)
        else:
            a, b = _clean(list(_finite(variant).values())), _clean(list(_finite(baseline).values()))
            result = stats.bootstrap((a, b), _difference_of_means, **kw)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) and comparison.ci_half_width == 0.0:
        low = high = comparison.delta  # constant differences: every resample is the same number
    return dataclasses.replace(comparison, ci_low=low, ci_high=high, ci_half_width=(high - low) / 2)


def _difference_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def holm(comparisons: list[Comparison | None], alpha: float = ALPHA) -> list[Comparison | None]:
    """Holm-adjust the finite p-values of a sweep's comparisons together (one family); others keep NaN."""
    index = [i for i, c in enumerate(comparisons) if c is not None and c.testable and math.isfinite(c.p_value)]
    out = list(comparisons)
    if not index:
        return out
    from statsmodels.stats.multitest import multipletests  # 2 s to import: only when there is a family

    adjusted = multipletests([comparisons[i].p_value for i in index], alpha=alpha, method="holm")[1]  # type: ignore[union-attr]
    for i, p in zip(index, adjusted):
        out[i] = dataclasses.replace(comparisons[i], p_adjusted=float(p))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Best:
    variant: str
    mean: float
    "mean loss over the variant's seeds"
    ci_half_width: float
    "95% t interval of that mean; NaN with one seed"
    num_seeds: int

    def describe(self) -> str:
        ci = "" if math.isnan(self.ci_half_width) else f" ± {self.ci_half_width:.3f}"
        return f"{self.variant} {self.mean:.4f}{ci} (mean of {self.num_seeds} seed{'s' * (self.num_seeds != 1)})"


def best_mean(values_by_variant: Mapping[str, Iterable[float]]) -> Best | None:
    """The variant with the lowest mean over its seeds (not the luckiest single seed), with its CI."""
    best = None
    for variant, values in values_by_variant.items():
        array = _clean(list(values))
        if array.size == 0:
            continue
        mean, half = mean_ci(array)
        if best is None or mean < best.mean:
            best = Best(variant=variant, mean=mean, ci_half_width=half, num_seeds=int(array.size))
    return best


def significant(comparison: Comparison, alpha: float = ALPHA) -> bool:
    """On the Holm-adjusted p where the comparison was adjusted, else the raw p.

    NaN p (both sides constant and equal) is "no evidence of a difference", never significant."""
    p = comparison.p_adjusted if math.isfinite(comparison.p_adjusted) else comparison.p_value
    return comparison.testable and bool(p < alpha)
