"""What worked and what didn't: one sweep's variants against its baseline, as markdown, CSV or LaTeX.

``sweep_table(store_url, sweep_name, fmt="md")`` is the entry point the sweep runner calls when a sweep ends.

The loss is ``eval_loss`` (held-out MLM loss at a fixed 15% masking, comparable across masking rates and
objectives) when every completed trial of the sweep has one, else ``final_loss`` (train loss over the last 10%
of steps); the caption names which. Means and intervals are over pretraining seeds of completed trials.

Δ loss is paired: trials that share a seed share every random draw that is not the variant (cram_core.rng),
so each variant is compared with the baseline seed by seed (paired t-test on the per-seed differences, t or
bootstrap CI of their mean); Welch's test only where fewer than two seeds pair. The p-values of a sweep's
comparisons are Holm-adjusted together, and the verdict uses the adjusted p.

Throughput is the machine's as much as the model's: the table measures the spread of tokens/s across trials
of one config (seeds of one variant). Above 10% it says so, marks the tokens/s column, and marks any verdict
reached under a seconds budget as unreliable. A Δ tokens/s is printed only when it is significant (Welch on
tokens/s, Holm over the sweep), else "n.s.".

Verdicts, in order of precedence:
- ``baseline`` for the baseline row;
- ``diverged`` when every seed diverged, ``diverged (k/n)`` when some did: a recipe that diverges on some seeds
  is not one to keep, and the surviving seeds' loss is biased low, so no loss verdict is claimed;
- ``failed`` / ``pending`` when no seed completed for other reasons;
- ``n=1, Δ only`` when the variant or the baseline has fewer than two completed seeds;
- ``helped`` / ``hurt`` when the Holm-adjusted p < 0.05 (lower loss = helped), else
  ``no significant difference``; a ``†`` marks a verdict under a seconds budget on a noisy machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats
from analysis.load import SweepFrames, Store, load_sweep, sweep_names, using_store
from sweeps.live import format_count

FORMATS = ("md", "csv", "latex")
KINDS = ("auto", "variants", "groups")
GROUP_ABLATION_SWEEP = "group_ablation"
BASELINE_VARIANT = "baseline"
LOSS_LABELS = {
    "eval_loss": "held-out MLM loss (eval_loss, fixed 15% masking)",
    "final_loss": "train MLM loss over the last 10% of steps (final_loss; not every trial has eval_loss)",
}
OTHER_STATUSES = ("planned", "running", "cancelled")
CI_METHODS = stats.CI_METHODS
NOISY_THROUGHPUT_PCT = 10.0
"spread of tokens/s between trials of one config above which throughput and seconds budgets are unreliable"
UNRELIABLE = " †"


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepSummary:
    name: str
    loss_metric: str
    "eval_loss or final_loss, whichever every completed trial has"
    baseline: str | None
    "the baseline variant's name; None when the sweep has no baseline trials"
    rows: pd.DataFrame
    "one row per variant, raw numbers (the CSV form)"
    tasks: list[str]
    "downstream tasks with results, in column order"
    status_counts: dict[str, int]
    ci_method: str = "t"
    "t or bootstrap: how the Δ loss intervals were computed"
    throughput_spread_pct: float = float("nan")
    "largest spread of tokens/s (max/min - 1, in %) between trials of one config; NaN below two trials each"
    budget_kinds: tuple[str, ...] = ()
    "budget kinds of the sweep's completed trials"

    @property
    def noisy_throughput(self) -> bool:
        return bool(self.throughput_spread_pct > NOISY_THROUGHPUT_PCT)

    @property
    def single_seed(self) -> bool:
        return int(self.rows["n_completed"].max()) <= 1

    @property
    def baseline_seeds(self) -> int:
        return int(self.rows.loc[self.rows["is_baseline"], "n_completed"].sum())


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    caption: str
    display: pd.DataFrame
    "formatted cells for markdown and LaTeX"
    raw: pd.DataFrame
    "numbers for CSV"


# ---------------------------------------------------------------------------------------------- numbers


def choose_loss_metric(trials: pd.DataFrame) -> str:
    completed = trials[trials["status"] == "completed"]
    if len(completed) and completed["eval_loss"].notna().all():
        return "eval_loss"
    return "final_loss"


def baseline_variant(trials: pd.DataFrame) -> str | None:
    flagged = trials.loc[trials["is_baseline"].fillna(False).astype(bool), "variant"].unique().tolist()
    if BASELINE_VARIANT in flagged or (not flagged and (trials["variant"] == BASELINE_VARIANT).any()):
        return BASELINE_VARIANT
    return flagged[0] if flagged else None


def downstream_scores(evals: pd.DataFrame) -> pd.DataFrame:
    """Per-variant score per task: median over fine-tuning seeds, mean over metrics, mean over pretraining seeds.

    A task logging several metrics (MRPC F1 and accuracy) contributes their mean, so it weighs once in the
    average. ``avg`` is NaN for a variant missing any task, since its mean would not be comparable.
    """
    ok = evals[(evals["status"] == "completed") & evals["value"].notna()]
    if ok.empty:
        return pd.DataFrame()
    per_seed = ok.groupby(["variant", "trial_id", "task", "metric"], sort=False)["value"].median()
    per_task = per_seed.groupby(level=["variant", "trial_id", "task"], sort=False).mean()
    per_variant = per_task.groupby(level=["variant", "task"], sort=False).mean().unstack("task")
    per_variant["avg"] = per_variant.mean(axis=1, skipna=False)
    return per_variant


def _status_counts(statuses: pd.Series) -> dict[str, int]:
    counts = statuses.value_counts().to_dict()
    return {
        "completed": int(counts.get("completed", 0)),
        "diverged": int(counts.get("diverged", 0)),
        "failed": int(counts.get("failed", 0)),
        "other": int(sum(counts.get(s, 0) for s in OTHER_STATUSES)),
    }


def _throughput(trials: pd.DataFrame) -> pd.Series:
    # older rows may lack the promoted column; tokens / budget seconds is the same quantity
    return trials["tokens_per_second"].fillna(trials["tokens"] / trials["seconds"].replace(0.0, np.nan))


def _by_seed(done: pd.DataFrame, column: str) -> dict[int, float]:
    """{seed: value} of completed trials (the mean if a seed repeats)."""
    values = pd.to_numeric(done[column], errors="coerce")
    return {int(s): float(v) for s, v in values.groupby(done["seed"]).mean().items()}


def spread_pct(values: pd.Series) -> float:
    """(max / min - 1) in percent over the finite positive values; NaN below two."""
    finite = values[np.isfinite(values.to_numpy(float)) & (values > 0)]
    return 100.0 * (float(finite.max()) / float(finite.min()) - 1.0) if len(finite) >= 2 else math.nan


def _verdict(counts: dict[str, int], comparison: stats.Comparison | None, is_baseline: bool) -> str:
    attempted = counts["completed"] + counts["diverged"] + counts["failed"]
    if is_baseline:
        return "baseline"
    if counts["diverged"]:
        return "diverged" if counts["diverged"] == attempted else f"diverged ({counts['diverged']}/{attempted})"
    if counts["completed"] == 0:
        return "failed" if counts["failed"] else "pending"
    if comparison is None or comparison.num_baseline == 0:
        return "no baseline"
    if not comparison.testable:
        return "n=1, Δ only"
    if not stats.significant(comparison):
        return "no significant difference"
    return "helped" if comparison.delta < 0 else "hurt"


def _compare(completed: pd.DataFrame, variants: list[str], baseline: str | None, metric: str,
             ci: str) -> tuple[dict[str, stats.Comparison], dict[str, stats.Comparison]]:
    """Loss comparisons (paired, Holm, t or bootstrap CI) and throughput comparisons (Welch, Holm) per variant."""
    others = [v for v in variants if baseline is not None and v != baseline]
    if not others:
        return {}, {}
    base = completed[completed["variant"] == baseline]
    base_loss = _by_seed(base, metric)
    loss_by = {v: _by_seed(completed[completed["variant"] == v], metric) for v in others}
    losses = stats.holm([stats.paired(loss_by[v], base_loss) for v in others])
    if ci == "bootstrap":
        losses = [stats.bootstrap_ci(c, loss_by[v], base_loss) for c, v in zip(losses, others)]
    base_tps = _throughput(base).to_numpy(float)
    tps = stats.holm([stats.welch(_throughput(completed[completed["variant"] == v]).to_numpy(float), base_tps)
                      for v in others])
    return dict(zip(others, losses)), dict(zip(others, tps))  # type: ignore[arg-type]


def summarize(frames: SweepFrames, *, ci: str = "t") -> SweepSummary:
    """Per-variant numbers of one sweep against its baseline (raw, unformatted); ``ci``: t or bootstrap."""
    if ci not in CI_METHODS:
        raise ValueError(f"unknown CI method {ci!r}; valid: {', '.join(CI_METHODS)}")
    trials = frames.trials
    metric = choose_loss_metric(trials)
    baseline = baseline_variant(trials)
    completed = trials[trials["status"] == "completed"]
    base_done = completed[completed["variant"] == baseline]
    base_tps = float(np.nanmean(_throughput(base_done))) if len(base_done) else math.nan
    variants = variant_order(trials, baseline)
    comparisons, tps_comparisons = _compare(completed, variants, baseline, metric, ci)
    records = []
    for variant in variants:
        runs = trials[trials["variant"] == variant]
        done = completed[completed["variant"] == variant]
        counts = _status_counts(runs["status"])
        is_baseline = variant == baseline
        loss_mean, loss_ci = stats.mean_ci(done[metric].to_numpy(float))
        comparison = comparisons.get(variant)
        tps = _throughput(done)
        tps_mean = float(tps.mean()) if tps.notna().any() else math.nan
        tps_test = tps_comparisons.get(variant)
        records.append({
            "variant": variant,
            "is_baseline": is_baseline,
            "n_completed": counts["completed"],
            "n_diverged": counts["diverged"],
            "n_failed": counts["failed"],
            "n_other": counts["other"],
            "loss_metric": metric,
            "loss_mean": loss_mean,
            "loss_ci95": loss_ci,
            "delta_loss": comparison.delta if comparison else (0.0 if is_baseline else math.nan),
            "delta_ci95": comparison.ci_half_width if comparison else math.nan,
            "delta_ci_low": comparison.ci_low if comparison else math.nan,
            "delta_ci_high": comparison.ci_high if comparison else math.nan,
            "test": comparison.method if comparison else "",
            "n_pairs": comparison.num_pairs if comparison else 0,
            "p_value": comparison.p_value if comparison else math.nan,
            "p_holm": comparison.p_adjusted if comparison else math.nan,
            "tokens_mean": float(done["tokens"].mean()) if len(done) else math.nan,
            "tokens_per_second_mean": tps_mean,
            "tokens_per_second_std": float(tps.std(ddof=1)) if tps.notna().sum() > 1 else math.nan,
            "tokens_per_second_spread_pct": spread_pct(tps),
            "delta_throughput_pct": 100.0 * (tps_mean / base_tps - 1.0) if base_tps > 0 else math.nan,
            "delta_throughput_p_holm": tps_test.p_adjusted if tps_test else math.nan,
            "delta_throughput_significant": bool(tps_test and stats.significant(tps_test)),
            "verdict": _verdict(counts, comparison, is_baseline),
        })
    rows = pd.DataFrame.from_records(records)
    scores = downstream_scores(frames.evals)
    tasks = [c for c in scores.columns if c != "avg"]
    if tasks:
        for task in tasks:
            rows[f"task:{task}"] = rows["variant"].map(scores[task])
        rows["downstream_avg"] = rows["variant"].map(scores["avg"])
        base_avg = scores["avg"].get(baseline, math.nan) if baseline else math.nan
        rows["delta_downstream_avg"] = rows["downstream_avg"] - base_avg
    spreads = rows["tokens_per_second_spread_pct"].to_numpy(float)
    kinds = tuple(sorted(completed["budget_kind"].dropna().astype(str).unique())) \
        if "budget_kind" in completed else ()
    summary = SweepSummary(name=frames.name, loss_metric=metric, baseline=baseline, rows=rows, tasks=tasks,
                           status_counts=_status_counts(trials["status"]), ci_method=ci,
                           throughput_spread_pct=float(np.nanmax(spreads)) if np.isfinite(spreads).any() else math.nan,
                           budget_kinds=kinds)
    if summary.noisy_throughput and "seconds" in kinds:
        loss_verdicts = rows["verdict"].isin(["helped", "hurt", "no significant difference"])
        rows.loc[loss_verdicts, "verdict"] = rows.loc[loss_verdicts, "verdict"] + UNRELIABLE
    return summary


def best_line(frames: SweepFrames) -> str | None:
    """The variant with the best mean loss over its seeds (diverging ones excluded), its CI and paired Δ."""
    summary = summarize(frames)
    rows = summary.rows.set_index("variant")
    completed = frames.trials[frames.trials["status"] == "completed"]
    eligible = rows.index[~rows["verdict"].str.startswith("diverged")]
    best = stats.best_mean({v: completed.loc[completed["variant"] == v, summary.loss_metric].to_numpy(float)
                            for v in eligible})
    if best is None:
        return None
    row = rows.loc[best.variant]
    text = f"Best (mean over seeds, 95% CI): {best.describe()}"
    if not row["is_baseline"] and not _is_nan(row["delta_loss"]):
        text += (f"; Δ vs {summary.baseline} {fmt_delta(row['delta_loss'], row['delta_ci95'])}, "
                 f"p (Holm) {fmt_p(row['p_holm'], _testable(row, summary))}: {row['verdict']}")
    return text + "."


def variant_order(trials: pd.DataFrame, baseline: str | None) -> list[str]:
    """Baseline first, then the variants in the order their first trial was stored."""
    # first appearance follows the sweep definition's order, which is how the author thinks of the axis
    order = trials.sort_values("trial_id")["variant"].drop_duplicates().tolist()
    if baseline in order:
        order.remove(baseline)
        order.insert(0, baseline)
    return order


# ------------------------------------------------------------------------------------------- formatting


def _is_nan(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _minus(text: str) -> str:
    return text.replace("-", "−")


def fmt_loss(mean: float, ci: float) -> str:
    if _is_nan(mean):
        return "—"
    return f"{mean:.3f}" if _is_nan(ci) else f"{mean:.3f} ± {ci:.3f}"


def fmt_delta(delta: float, ci: float) -> str:
    if _is_nan(delta):
        return "—"
    text = f"{delta:+.1e}" if 0 < abs(delta) < 5e-4 else f"{delta:+.3f}"
    return _minus(text if _is_nan(ci) else f"{text} ± {ci:.3f}")


def fmt_interval(delta: float, low: float, high: float) -> str:
    """Δ with a (possibly asymmetric) bootstrap interval: +0.012 [+0.004, +0.020]."""
    if _is_nan(delta):
        return "—"
    if _is_nan(low):
        return fmt_delta(delta, math.nan)
    return _minus(f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]")


def fmt_p(p: float, testable: bool) -> str:
    if not testable:
        return "n=1"
    if _is_nan(p):
        return "—"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def fmt_count(x: float) -> str:
    return format_count(x)  # one format for `sweeps status`, the live view and these tables


def fmt_pct(x: float) -> str:
    return "—" if _is_nan(x) else _minus(f"{x:+.1f}%")


def score_decimals(scores: pd.DataFrame) -> int:
    # scores may be stored as fractions (0.812) or percentages (81.2); show three significant figures either way
    values = scores.abs().to_numpy(float)
    return 1 if values.size and np.nanmax(values, initial=0.0) >= 10 else 3


def fmt_score(x: float, decimals: int, *, signed: bool = False) -> str:
    if _is_nan(x):
        return "—"
    return _minus(f"{x:+.{decimals}f}") if signed else f"{x:.{decimals}f}"


def fmt_runs(row: pd.Series) -> str:
    text = f"{row['n_completed']}/{row['n_diverged']}/{row['n_failed']}"
    return f"{text} (+{row['n_other']} other)" if row["n_other"] else text


def _testable(row: pd.Series, summary: SweepSummary) -> bool:
    return row["n_completed"] >= 2 and summary.baseline_seeds >= 2


def _stat_cells(row: pd.Series, summary: SweepSummary) -> dict[str, str]:
    no_delta = row["is_baseline"] or summary.baseline is None
    no_p = no_delta or _is_nan(row["delta_loss"])
    testable = _testable(row, summary)
    if no_delta:
        delta = "—"
    elif summary.ci_method == "bootstrap":
        delta = fmt_interval(row["delta_loss"], row["delta_ci_low"], row["delta_ci_high"])
    else:
        delta = fmt_delta(row["delta_loss"], row["delta_ci95"])
    if row["test"] == "welch":
        delta += " (Welch)"
    return {
        "loss": fmt_loss(row["loss_mean"], row["loss_ci95"]),
        "Δ loss": delta,
        "p": "—" if no_p else fmt_p(row["p_value"], testable),
        "p (Holm)": "—" if no_p else fmt_p(row["p_holm"], testable),
    }


def fmt_throughput_delta(row: pd.Series) -> str:
    """Δ tokens/s only where it is significant (Welch, Holm): otherwise machine noise reads as an effect."""
    if row["is_baseline"]:
        return "—"
    if not row["delta_throughput_significant"]:
        return "n.s." if np.isfinite(row["delta_throughput_p_holm"]) else "—"
    return fmt_pct(row["delta_throughput_pct"])


def _caption_common(summary: SweepSummary) -> str:
    counts = summary.status_counts
    total = sum(counts.values())
    status = (f"{total} trials: {counts['completed']} completed, {counts['diverged']} diverged, "
              f"{counts['failed']} failed")
    if counts["other"]:
        status += f", {counts['other']} planned/running/cancelled"
    parts = [f"Loss: {LOSS_LABELS[summary.loss_metric]}, mean ± 95% CI over seeds (Student t)."]
    if summary.baseline is None:
        parts.append("No baseline trials in this sweep, so no Δ or tests.")
    else:
        interval = ("95% percentile-bootstrap CI" if summary.ci_method == "bootstrap" else "± 95% t CI")
        k = int((summary.rows["p_holm"].notna()).sum())
        if k:
            parts.append(f"Δ vs `{summary.baseline}`: mean of per-seed paired differences ({interval}), paired "
                         f"t-test; Welch where seeds don't pair. p (Holm) adjusts the {k} comparisons together; "
                         "verdicts use it at α = 0.05.")
        else:  # nothing had the seeds for a test: no test or adjustment to describe
            parts.append(f"Δ vs `{summary.baseline}`: variant minus baseline loss.")
    parts.append(_throughput_note(summary))
    if summary.single_seed:
        parts.append("One seed per variant: no confidence intervals or tests, Δ only.")
    elif summary.baseline is not None and summary.baseline_seeds < 2:
        parts.append("The baseline has fewer than two completed seeds: no tests, Δ only.")
    if summary.tasks:
        parts.append("Downstream: median over fine-tuning seeds per task, mean over pretraining seeds; "
                     "avg = mean over tasks.")
    parts.append(status + ".")
    return " ".join(parts)


def _throughput_note(summary: SweepSummary) -> str:
    spread = summary.throughput_spread_pct
    if not summary.noisy_throughput:
        measured = "" if _is_nan(spread) else f" (tokens/s spread between seeds of one config ≤ {spread:.1f}%)"
        return f"Δ tokens/s is shown only where significant (Welch, Holm), else n.s.{measured}" + ("." if measured else "")
    note = (f"Unreliable throughput: tokens/s of one config varied by up to {spread:.1f}% between seeds (> "
            f"{NOISY_THROUGHPUT_PCT:.0f}%), so the machine, not the variant, set it (tokens/s†).")
    if "seconds" in summary.budget_kinds:
        note += (" Under this seconds budget the loss verdicts (†) measure that noise too: rerun with a token "
                 "or FLOP budget.")
    return note


def _decimals(summary: SweepSummary) -> int:
    return score_decimals(summary.rows[[f"task:{t}" for t in summary.tasks]]) if summary.tasks else 3


def variant_table(summary: SweepSummary) -> Table:
    """Every variant against the baseline: loss, Δ and test, tokens, throughput, runs, verdict, downstream."""
    display_rows = []
    decimals = _decimals(summary)
    for _, row in summary.rows.iterrows():
        tps_header = "tokens/s" + UNRELIABLE.strip() if summary.noisy_throughput else "tokens/s"
        cells = {"variant": row["variant"], "runs ok/div/fail": fmt_runs(row), **_stat_cells(row, summary),
                 "tokens": fmt_count(row["tokens_mean"]), tps_header: fmt_count(row["tokens_per_second_mean"]),
                 "Δ tokens/s": fmt_throughput_delta(row), "verdict": row["verdict"]}
        for task in summary.tasks:
            cells[task] = fmt_score(row[f"task:{task}"], decimals)
        if summary.tasks:
            cells["avg"] = fmt_score(row["downstream_avg"], decimals)
        display_rows.append(cells)
    caption = f"Sweep {summary.name}: each variant against the baseline. {_caption_common(summary)}"
    return Table(caption=caption, display=pd.DataFrame(display_rows), raw=summary.rows)


def group_label(variant: str, is_baseline: bool) -> str:
    if is_baseline:
        return "none (crammed baseline)"
    return variant.removeprefix("bert-").replace("-", " ").replace("_", " ")


def group_table(summary: SweepSummary) -> Table:
    """The paper's Table 5 form: which group is reset to original BERT, loss, Δ vs crammed, downstream avg."""
    display_rows, raw_rows = [], []
    decimals = _decimals(summary)
    for _, row in summary.rows.iterrows():
        label = group_label(row["variant"], row["is_baseline"])
        stat = _stat_cells(row, summary)
        cells = {"reset to BERT": label, "seeds": str(row["n_completed"]), "loss": stat["loss"],
                 "Δ vs crammed": stat["Δ loss"], "p": stat["p"], "p (Holm)": stat["p (Holm)"]}
        raw = {"group": label, "variant": row["variant"], "n_completed": row["n_completed"],
               "loss_mean": row["loss_mean"], "loss_ci95": row["loss_ci95"], "delta_loss": row["delta_loss"],
               "delta_ci95": row["delta_ci95"], "p_value": row["p_value"], "p_holm": row["p_holm"]}
        if summary.tasks:
            cells["downstream avg"] = fmt_score(row["downstream_avg"], decimals)
            cells["Δ avg"] = "—" if row["is_baseline"] else fmt_score(row["delta_downstream_avg"], decimals,
                                                                      signed=True)
            raw |= {"downstream_avg": row["downstream_avg"], "delta_downstream_avg": row["delta_downstream_avg"]}
        cells["verdict"] = row["verdict"]
        raw["verdict"] = row["verdict"]
        display_rows.append(cells)
        raw_rows.append(raw)
    caption = (f"Group ablation ({summary.name}, paper Table 5 form): each row resets one group of changes to "
               f"original BERT. {_caption_common(summary)}")
    return Table(caption=caption, display=pd.DataFrame(display_rows), raw=pd.DataFrame(raw_rows))


# -------------------------------------------------------------------------------------------- rendering


def to_markdown(table: Table) -> str:
    header = list(table.display.columns)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---" if i == 0 else "--:" for i in range(len(header))]
    if "verdict" in header:
        align[header.index("verdict")] = "---"
    body = [line(list(map(str, r))) for r in table.display.itertuples(index=False)]
    return "\n".join([f"*{table.caption}*", "", line(header), "|" + "|".join(align) + "|", *body])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "α": r"$\alpha$", "<": r"$<$", ">": r"$>$",
                  "—": "---", "`": ""}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    header = list(table.display.columns)
    spec = "l" + "r" * (len(header) - 1)
    if "verdict" in header:
        index = header.index("verdict")
        spec = spec[:index] + "l" + spec[index + 1:]
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.caption)}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in table.display.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_csv(table: Table) -> str:
    return table.raw.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def render(table: Table, fmt: str) -> str:
    renderers = {"md": to_markdown, "csv": to_csv, "latex": to_latex}
    if fmt not in renderers:
        raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    return renderers[fmt](table)


def empty_message(frames: SweepFrames) -> str | None:
    """One line for a sweep with nothing to compare yet, else None."""
    trials = frames.trials
    if trials.empty:
        return f"sweep {frames.name!r}: no trials in the store yet"
    if (trials["status"] == "completed").any():
        return None
    counts = trials["status"].value_counts()
    detail = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"sweep {frames.name!r}: no completed trials yet ({detail})"


def tables_for(frames: SweepFrames, fmt: str = "md", *, kind: str = "auto", ci: str = "t") -> list[Table]:
    if kind not in KINDS:
        raise ValueError(f"unknown table kind {kind!r}; valid: {', '.join(KINDS)}")
    summary = summarize(frames, ci=ci)
    if kind == "groups":
        return [group_table(summary)]
    tables = [variant_table(summary)]
    # CSV is one machine-readable table; the group form only relabels the same numbers
    if kind == "auto" and frames.name == GROUP_ABLATION_SWEEP and fmt != "csv":
        tables.append(group_table(summary))
    return tables


def sweep_table(store_url: Store, sweep_name: str, fmt: str = "md", *, kind: str = "auto", ci: str = "t") -> str:
    """The sweep's results table as text (``fmt``: md, csv or latex).

    ``kind="auto"`` gives the per-variant table, followed by the paper's Table 5 form for the group ablation
    sweep (markdown and LaTeX only); ``"groups"`` forces the Table 5 form for any sweep. A sweep with no
    completed trials gives one line saying so. ``ci``: t (default) or bootstrap intervals of Δ loss.
    Raises ``StoreError`` (missing store) or ``UnknownSweepError``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    frames = load_sweep(store_url, sweep_name)
    message = empty_message(frames)
    if message is not None:
        return message
    return "\n\n".join(render(t, fmt) for t in tables_for(frames, fmt, kind=kind, ci=ci))


def all_comparisons(store: Store) -> pd.DataFrame:
    """Every non-baseline variant of every sweep with a comparable Δ loss (for the all-sweeps summary)."""
    frames = []
    with using_store(store) as engine:
        for name in sweep_names(engine):
            sweep = load_sweep(engine, name)
            if empty_message(sweep) is not None:
                continue
            summary = summarize(sweep)
            rows = summary.rows[~summary.rows["is_baseline"] & summary.rows["delta_loss"].notna()].copy()
            rows.insert(0, "sweep", name)
            frames.append(rows)
    columns = ["sweep", "variant", "loss_metric", "delta_loss", "delta_ci95", "p_value", "p_holm", "verdict"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
