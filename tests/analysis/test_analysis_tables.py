import io
import math

import numpy as np
import pandas as pd
import pytest
from analysis_store import GLUE_TASKS, GROUPS, LR_SCHEDULES, THROUGHPUT
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from analysis import tables
from analysis.load import SweepFrames, load_sweep


@pytest.fixture(scope="module")
def lr_rows(store_url):
    return tables.summarize(load_sweep(store_url, "lr_schedules")).rows.set_index("variant")


def test_loss_ci_and_paired_figures_match_scipy_and_statsmodels(lr_rows):
    base = LR_SCHEDULES["baseline"]
    raw = []
    for variant in ("one-cycle", "constant", "cosine"):
        seeds = LR_SCHEDULES[variant]
        row = lr_rows.loc[variant]
        assert row["loss_mean"] == pytest.approx(np.mean(seeds))
        assert row["loss_ci95"] == pytest.approx(st.t.ppf(0.975, 2) * np.std(seeds, ddof=1) / math.sqrt(3))
        reference = st.ttest_rel(seeds, base)  # seeds 0, 1, 2 on both sides: paired
        assert row["test"] == "paired" and row["n_pairs"] == 3
        assert row["p_value"] == pytest.approx(reference.pvalue)
        assert row["delta_loss"] == pytest.approx(np.mean(np.subtract(seeds, base)))
        low, high = reference.confidence_interval(0.95)
        assert row["delta_ci95"] == pytest.approx((high - low) / 2)
        assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((low, high))
        raw.append(reference.pvalue)
    # inverse-sqrt has one seed (no p), ramp diverged: the family is the three testable comparisons
    holm = multipletests(raw, method="holm")[1]
    assert lr_rows.loc[["one-cycle", "constant", "cosine"], "p_holm"].tolist() == pytest.approx(list(holm))
    assert math.isnan(lr_rows.loc["inverse-sqrt", "p_holm"])


def test_verdicts(lr_rows):
    assert lr_rows["verdict"].to_dict() == {
        "baseline": "baseline",
        "one-cycle": "helped",
        "constant": "hurt",
        "cosine": "no significant difference",
        "inverse-sqrt": "n=1, Δ only",
        "ramp": "diverged",
    }


def test_status_counts_throughput_and_loss_metric(lr_rows):
    base = lr_rows.loc["baseline"]
    assert (base["n_completed"], base["n_diverged"], base["n_failed"]) == (3, 0, 1)
    assert lr_rows.loc["ramp", "n_diverged"] == 3
    base_tps = THROUGHPUT["baseline"] + 1.0  # seeds 0, 1, 2 add 0, 1, 2 tokens/s
    constant_tps = THROUGHPUT["constant"] + 1.0
    assert lr_rows.loc["constant", "delta_throughput_pct"] == pytest.approx(100 * (constant_tps / base_tps - 1))
    assert lr_rows.loc["constant", "tokens_mean"] == pytest.approx(constant_tps * 1000.0)
    assert set(lr_rows["loss_metric"]) == {"eval_loss"}


def test_markdown_table(store_url):
    text = tables.sweep_table(store_url, "lr_schedules")
    lines = text.splitlines()
    assert "eval_loss" in lines[0] and "paired" in lines[0] and "Holm" in lines[0]
    header = next(line for line in lines if line.startswith("| variant"))
    assert "Δ loss" in header and "tokens/s" in header and "verdict" in header
    one_cycle = next(line for line in lines if line.startswith("| one-cycle"))
    assert "2.400 ± 0.025" in one_cycle and "helped" in one_cycle and "−0.100" in one_cycle
    assert "| 3/0/1 |" in next(line for line in lines if line.startswith("| baseline"))


def test_csv_parses_with_all_rows(store_url):
    frame = pd.read_csv(io.StringIO(tables.sweep_table(store_url, "lr_schedules", fmt="csv")))
    assert frame["variant"].tolist() == ["baseline", "one-cycle", "constant", "cosine", "inverse-sqrt", "ramp"]
    assert frame.set_index("variant").loc["one-cycle", "loss_mean"] == pytest.approx(2.40)
    assert {"loss_ci95", "delta_loss", "p_value", "delta_throughput_pct", "verdict", "n_diverged"} <= set(frame)


def test_latex_contains_rows(store_url):
    text = tables.sweep_table(store_url, "lr_schedules", fmt="latex")
    assert r"\begin{tabular}" in text and r"\caption{Sweep lr\_schedules" in text
    for variant in LR_SCHEDULES:
        assert f"\n{variant} &" in text
    assert r"2.400 $\pm$ 0.025" in text and r"$\Delta$" in text and "eval\\_loss" in text


def test_empty_sweeps_are_one_line(store_url):
    for name in ("empty_sweep", "no_trials"):
        for fmt in tables.FORMATS:
            text = tables.sweep_table(store_url, name, fmt=fmt)
            assert len(text.splitlines()) == 1 and name in text
    assert "no completed trials" in tables.sweep_table(store_url, "empty_sweep")


def test_single_seed_sweep(store_url):
    text = tables.sweep_table(store_url, "single_seed")
    caption = text.splitlines()[0]
    assert "One seed per variant" in caption
    # one trial lacks eval_loss, so the whole sweep falls back to the train loss and says so
    assert "final_loss" in caption
    assert text.count("n=1, Δ only") == 2 and "±" not in text.split("\n", 1)[1]


def test_group_ablation_in_table5_form(store_url):
    text = tables.sweep_table(store_url, "group_ablation")
    assert "Group ablation" in text
    group_part = text[text.index("*Group ablation"):]
    for label in ("none (crammed baseline)", "| architecture |", "| training |", "| data |"):
        assert label in group_part
    assert "| downstream avg | Δ avg |" in group_part


def test_downstream_is_median_over_finetuning_seeds(store_url):
    rows = tables.summarize(load_sweep(store_url, "group_ablation")).rows.set_index("variant")
    for variant, (_, glue) in GROUPS.items():
        # per trial the median is glue + 0.2 * seed + task index; mean over the two pretraining seeds
        expected = {task: glue + 0.1 + i for i, task in enumerate(GLUE_TASKS)}
        for task, value in expected.items():
            assert rows.loc[variant, f"task:{task}"] == pytest.approx(value)
        assert rows.loc[variant, "downstream_avg"] == pytest.approx(np.mean(list(expected.values())))
    assert rows.loc["bert-architecture", "delta_downstream_avg"] == pytest.approx(-2.0)


def test_groups_kind_and_csv(store_url):
    frame = pd.read_csv(io.StringIO(tables.sweep_table(store_url, "group_ablation", fmt="csv", kind="groups")))
    assert frame["group"].tolist() == ["none (crammed baseline)", "architecture", "training", "data"]
    with pytest.raises(ValueError, match="md, csv, latex"):
        tables.sweep_table(store_url, "group_ablation", fmt="html")


def test_all_comparisons(store_url):
    frame = tables.all_comparisons(store_url)
    assert set(frame["sweep"]) == {"lr_schedules", "single_seed", "group_ablation"}
    assert "ramp" not in set(frame["variant"])  # diverged: no loss to compare


def _frames(rows: list[dict], name: str = "synthetic") -> SweepFrames:
    defaults = {"is_baseline": False, "status": "completed", "final_loss": None, "tokens": 1e6, "seconds": 100.0,
                "tokens_per_second": 1e4}
    trials = pd.DataFrame([{**defaults, "trial_id": i, **row} for i, row in enumerate(rows)])
    trials["final_loss"] = trials["final_loss"].fillna(trials["eval_loss"] + 0.1)
    evals = pd.DataFrame(columns=["trial_id", "variant", "seed", "status", "task", "metric", "value", "eval_seed"])
    return SweepFrames(name=name, definition={}, trials=trials, metrics=pd.DataFrame(), evals=evals)


def test_partial_divergence_and_one_seed_baseline():
    frames = _frames([
        {"variant": "baseline", "is_baseline": True, "seed": 0, "eval_loss": 2.5},
        {"variant": "fast", "seed": 0, "eval_loss": 2.3},
        {"variant": "fast", "seed": 1, "eval_loss": 2.31},
        {"variant": "fast", "seed": 2, "eval_loss": None, "status": "diverged"},
        {"variant": "slow", "seed": 0, "eval_loss": 2.6},
        {"variant": "slow", "seed": 1, "eval_loss": 2.61},
    ])
    summary = tables.summarize(frames)
    verdicts = summary.rows.set_index("variant")["verdict"].to_dict()
    assert verdicts == {"baseline": "baseline", "fast": "diverged (1/3)", "slow": "n=1, Δ only"}
    # the diverged seed has no eval_loss but only completed trials decide the loss metric
    assert summary.loss_metric == "eval_loss"
    assert "baseline has fewer than two completed seeds" in tables.variant_table(summary).caption


def test_sweep_without_baseline_has_no_deltas():
    frames = _frames([{"variant": "a", "seed": s, "eval_loss": 2.5 + s / 100} for s in range(2)]
                     + [{"variant": "b", "seed": s, "eval_loss": 2.4 + s / 100} for s in range(2)])
    table = tables.variant_table(tables.summarize(frames))
    assert "No baseline trials" in table.caption
    assert table.display["verdict"].tolist() == ["no baseline", "no baseline"]
    assert set(table.display["Δ loss"]) == {"—"}


def test_a_caption_with_nothing_tested_says_so_in_plain_sentences(store_url):
    # before, one seed a side read "p (Holm) adjusts the 0 comparisons together" and, with no throughput spread
    # to report, "else n.s.." (the H200 preset_search page)
    caption = tables.tables_for(load_sweep(store_url, "single_seed"), "md")[0].caption
    assert "adjusts the 0 comparisons" not in caption and ".." not in caption, caption
    assert "Δ vs `baseline`: variant minus baseline loss." in caption and "else n.s. " in caption
    tested = tables.tables_for(load_sweep(store_url, "lr_schedules"), "md")[0].caption
    assert "p (Holm) adjusts the 3 comparisons together" in tested and ".." not in tested
