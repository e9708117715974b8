"""Paired comparisons, Holm, bootstrap CIs and the noisy-throughput warning, checked against scipy/statsmodels."""

import math

import numpy as np
import pytest
from analysis_store import _trial
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from analysis import stats, tables
from analysis.load import load_sweep
from sweeps.store import SweepRow, make_engine, session_factory

BASE = {0: 2.50, 1: 2.60, 2: 2.45, 3: 2.55}
VARIANT = {0: 2.48, 1: 2.57, 2: 2.44, 3: 2.52}  # 0.01-0.03 below the baseline on every seed


def test_paired_matches_ttest_rel_and_its_interval():
    result = stats.paired(VARIANT, BASE)
    x, y = list(VARIANT.values()), list(BASE.values())
    reference = st.ttest_rel(x, y)
    low, high = reference.confidence_interval(0.95)
    assert result.method == "paired" and result.num_pairs == 4
    assert result.delta == pytest.approx(np.mean(np.subtract(x, y)))
    assert result.p_value == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.ci_half_width == pytest.approx((high - low) / 2)
    # the seed-to-seed spread (0.15) hides the same numbers from an unpaired test
    assert result.p_value < 0.05 < 0.5 < stats.welch(x, y).p_value


def test_only_shared_seeds_pair_and_welch_is_the_fallback():
    partial = stats.paired({**VARIANT, 7: 9.0}, BASE)
    assert partial.num_pairs == 4 and partial.num_variant == 5
    assert partial.p_value == pytest.approx(st.ttest_rel(list(VARIANT.values()), list(BASE.values())).pvalue)
    unpaired = stats.paired({10: 2.40, 11: 2.42, 12: 2.41}, BASE)
    reference = st.ttest_ind([2.40, 2.42, 2.41], list(BASE.values()), equal_var=False)
    assert unpaired.method == "welch" and unpaired.num_pairs == 0
    assert unpaired.p_value == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert unpaired.ci_half_width == pytest.approx((high - low) / 2)
    assert stats.paired({0: 2.4}, BASE).method == "none"


def test_holm_matches_statsmodels_and_the_verdict_uses_the_adjusted_p():
    raw = [0.01, 0.04, 0.03, 0.5]
    comparisons = [stats.Comparison(delta=-0.1, p_value=p, ci_half_width=0.05, num_variant=3, num_baseline=3,
                                    method="paired") for p in raw]
    untestable = stats.Comparison(delta=0.1, p_value=math.nan, ci_half_width=math.nan, num_variant=1,
                                  num_baseline=3)
    adjusted = stats.holm([*comparisons, untestable, None])
    expected = multipletests(raw, alpha=0.05, method="holm")[1]
    assert [c.p_adjusted for c in adjusted[:4]] == pytest.approx(list(expected))
    assert math.isnan(adjusted[4].p_adjusted) and adjusted[5] is None
    # raw 0.04 < 0.05 but adjusted 0.09: significant before Holm, not after
    assert stats.significant(comparisons[1]) and not stats.significant(adjusted[1])
    assert stats.significant(adjusted[0])


def test_bootstrap_ci_matches_scipy_bootstrap():
    paired = stats.bootstrap_ci(stats.paired(VARIANT, BASE), VARIANT, BASE)
    diffs = np.subtract(list(VARIANT.values()), list(BASE.values()))
    reference = st.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                             method="percentile", rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert (paired.ci_low, paired.ci_high) == pytest.approx(
        (reference.confidence_interval.low, reference.confidence_interval.high))
    assert paired.p_value == stats.paired(VARIANT, BASE).p_value  # only the interval changes
    a, b = np.array([2.40, 2.42, 2.41]), np.array(list(BASE.values()))
    welch = stats.bootstrap_ci(stats.paired({10: 2.40, 11: 2.42, 12: 2.41}, BASE), {10: 2.40, 11: 2.42, 12: 2.41},
                               BASE)
    reference = st.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                             confidence_level=0.95, n_resamples=stats.BOOTSTRAP_RESAMPLES, method="percentile",
                             rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert (welch.ci_low, welch.ci_high) == pytest.approx(
        (reference.confidence_interval.low, reference.confidence_interval.high))
    constant = stats.bootstrap_ci(stats.paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5}), {0: 1.0, 1: 2.0},
                                  {0: 0.5, 1: 1.5})
    assert (constant.ci_low, constant.ci_high) == (0.5, 0.5)


def test_bootstrap_table_option(store_url):
    text = tables.sweep_table(store_url, "lr_schedules", ci="bootstrap")
    assert "bootstrap" in text.splitlines()[0]
    one_cycle = next(line for line in text.splitlines() if line.startswith("| one-cycle"))
    assert "[" in one_cycle and "helped" in one_cycle
    with pytest.raises(ValueError, match="t, bootstrap"):
        tables.sweep_table(store_url, "lr_schedules", ci="normal")


def _throughput_store(url: str, spread: float, budget_kind: str) -> None:
    """Baseline and one variant, 3 seeds each; seed s runs at 1000 * (1 + spread * s / 2) tokens/s."""
    engine = make_engine(url, create=True)
    with session_factory(engine)() as session, session.begin():
        sweep = SweepRow(name="noisy", definition={})
        for variant, losses in {"baseline": [2.50, 2.60, 2.45], "cosine": [2.40, 2.51, 2.36]}.items():
            for seed, loss in enumerate(losses):
                trial = _trial(sweep, variant, seed, loss=loss, tps=1000.0 * (1 + spread * seed / 2), curve=False)
                trial.budget_kind = budget_kind
                session.add(trial)
    engine.dispose()


@pytest.mark.parametrize("budget_kind", ["seconds", "tokens"])
def test_noisy_throughput_warning_fires_above_ten_percent(tmp_path, budget_kind):
    url = f"sqlite:///{tmp_path / 'noisy.db'}"
    _throughput_store(url, spread=0.3, budget_kind=budget_kind)  # 1000, 1150, 1300 tokens/s: 30%
    summary = tables.summarize(load_sweep(url, "noisy"))
    assert summary.throughput_spread_pct == pytest.approx(30.0)
    assert summary.noisy_throughput
    table = tables.variant_table(summary)
    assert "Unreliable throughput" in table.caption and "30.0%" in table.caption
    assert "tokens/s†" in table.display.columns
    verdict = table.display.set_index("variant").loc["cosine", "verdict"]
    if budget_kind == "seconds":
        assert verdict == "helped †" and "rerun with a token or FLOP budget" in table.caption
    else:
        assert verdict == "helped" and "seconds budget" not in table.caption


def test_quiet_throughput_has_no_warning_and_no_insignificant_delta(tmp_path):
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    _throughput_store(url, spread=0.05, budget_kind="seconds")
    summary = tables.summarize(load_sweep(url, "noisy"))
    assert summary.throughput_spread_pct == pytest.approx(5.0) and not summary.noisy_throughput
    table = tables.variant_table(summary)
    assert "Unreliable" not in table.caption and "tokens/s" in table.display.columns
    row = table.display.set_index("variant").loc["cosine"]
    assert row["verdict"] == "helped" and row["Δ tokens/s"] == "n.s."  # same throughput: no effect printed


def test_significant_throughput_delta_is_printed(store_url):
    rows = tables.variant_table(tables.summarize(load_sweep(store_url, "lr_schedules"))).display.set_index("variant")
    # constant runs at 1100-1102 tokens/s against the baseline's 1000-1002: +10%, significant
    assert rows.loc["constant", "Δ tokens/s"] == "+10.0%"
    assert rows.loc["one-cycle", "Δ tokens/s"] == "n.s."


def test_best_is_the_best_mean_over_seeds_with_its_ci():
    best = stats.best_mean({"lucky": [2.0, 3.0], "steady": [2.4, 2.41, 2.39], "one": [float("nan")]})
    assert best.variant == "steady" and best.num_seeds == 3
    assert (best.mean, best.ci_half_width) == pytest.approx(stats.mean_ci([2.4, 2.41, 2.39]))
    assert "steady" in best.describe() and "± " in best.describe() and "3 seeds" in best.describe()
    assert stats.best_mean({}) is None


def test_best_line_for_the_dashboard_note(store_url):
    line = tables.best_line(load_sweep(store_url, "lr_schedules"))
    # ramp diverged and is never "best"; inverse-sqrt's single seed (2.45) loses to one-cycle's mean (2.40)
    assert line == ("Best (mean over seeds, 95% CI): one-cycle 2.4000 ± 0.025 (mean of 3 seeds); "
                    "Δ vs baseline −0.100 ± 0.025, p (Holm) 0.007: helped.")


def test_cli_ci_bootstrap(store_url, capsys):
    from analysis.cli import main

    assert main(["table", "lr_schedules", "--store", store_url, "--ci", "bootstrap"]) == 0
    assert "percentile-bootstrap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["table", "lr_schedules", "--store", store_url, "--ci", "normal"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bootstrap" in err


def test_throughput_figure_prints_no_insignificant_delta(tmp_path):
    from analysis import plots

    url = f"sqlite:///{tmp_path / 'noisy.db'}"
    _throughput_store(url, spread=0.3, budget_kind="seconds")
    fig = plots.throughput_figure(tables.summarize(load_sweep(url, "noisy")))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["baseline", "n.s."]  # was "+0.0%": machine noise printed as an effect
    assert "unreliable" in fig.axes[0].get_title()
