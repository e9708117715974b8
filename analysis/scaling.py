"""The scaling view: each variant at several budgets (``sweeps run NAME --budgets ...``), fitted.

A table at one budget cannot tell a variant that is better from one that is only ahead early. Here, per
variant, the held-out loss L is read against the compute C the trials spent (model FLOPs, as the budget
clock counts them; seconds are shown beside), a curve is fitted, and the paired advantage over the baseline
is followed across the budgets.

**The fitted form.** With four or more budgets, ``L = a·C^-b + c`` (Kaplan et al., Hoffmann et al.): a
power law with an irreducible loss c, fitted with `scipy.optimize.curve_fit` (b in [0, 5], c in [0, min L]).
With two or three budgets that form has as many parameters as points: it passes through them exactly and c
trades off against b without limit, so ``L = a·C^-b`` is fitted instead. It is a straight line in log-log;
its b is the local slope over the measured range, not an asymptotic exponent, and the README says so. C is
divided by the smallest budget's mean compute so that a is the loss there and the fit is well scaled.

**CIs over seeds.** Every seed is fitted on its own (seed k of every budget shares data order, masks and
init), and b (and c) are reported as the mean over seeds ± a Student-t 95% interval; one seed gives no CI.

**Grows, holds or shrinks.** The advantage of a variant at a budget is its paired difference from the
baseline, seed by seed: A = L_baseline - L_variant (positive: the variant is better). Per seed, A is
regressed on log10 of the budget; the slope (advantage per decade of budget) is averaged over seeds with
a t interval. An interval above 0: the advantage *grows* with compute (for a variant behind the baseline:
it catches up); below 0: it *shrinks*; containing 0: it *holds*. Where the fitted line of the mean
advantage against log budget meets zero is the budget at which the variant would cross the baseline;
beyond the largest budget that is an extrapolation and is marked as one.

``python -m analysis results NAME`` puts these tables and both log-log figures on a page to commit
(`page_parts`, analysis.results_md), with the provenance and command of every other results page.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from cram_core.config import ConfigError
from scipy.optimize import OptimizeWarning, curve_fit
from sweeps.definitions import format_budget, parse_budget
from sweeps.store import StoreError

from analysis import stats
from analysis.load import SweepFrames, Store, load_sweep
from analysis.tables import (NOISY_THROUGHPUT_PCT, Table, baseline_variant, choose_loss_metric, fmt_count,
                             fmt_delta, fmt_loss, spread_pct, to_markdown, variant_order)

MIN_BUDGETS_FOR_OFFSET = 4
"budgets needed before the irreducible loss c is fitted (see the module docstring)"
FORM_OFFSET = "L = a·C^-b + c"
FORM_POWER = "L = a·C^-b"


class ScalingError(StoreError):
    """The sweep cannot be read as a scaling view (one budget, mixed kinds); the message says what to run."""


def power_law(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.power(x, -b)


def power_law_offset(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(x, -b) + c


@dataclass(frozen=True, kw_only=True, slots=True)
class CurveFit:
    form: str
    params: tuple[float, ...]
    "(a, b) or (a, b, c), fitted on every seed's points together (the drawn curve)"
    c_ref: float
    "compute the fit's x is divided by"
    b: float
    b_ci: float
    c: float = math.nan
    c_ci: float = math.nan
    num_seeds: int = 0

    def predict(self, compute: np.ndarray | float) -> np.ndarray:
        fn = power_law_offset if len(self.params) == 3 else power_law
        return fn(np.asarray(compute, dtype=float) / self.c_ref, *self.params)


@dataclass(frozen=True, kw_only=True, slots=True)
class Trend:
    advantage: dict[float, tuple[float, float]]
    "budget -> (mean paired advantage over seeds, t half-width)"
    slope: float
    "advantage per decade of budget (mean over seeds)"
    slope_ci: float
    verdict: str
    crossing: float = math.nan
    "budget at which the fitted mean advantage reaches 0; NaN where it does not ahead of the data"
    crossing_note: str = "—"


@dataclass(frozen=True, kw_only=True)
class ScalingView:
    name: str
    kind: str
    "budget kind: seconds, tokens or flops"
    budgets: list[float]
    labels: dict[float, str]
    "budget -> how it reads (a DURATION@GPU budget with its conversion)"
    baseline: str | None
    metric: str
    points: pd.DataFrame
    "one row per completed trial: variant, seed, budget, loss, tokens, flops, seconds"
    fits: dict[str, CurveFit | None] = field(default_factory=dict)
    trends: dict[str, Trend] = field(default_factory=dict)


def fit_curve(compute: np.ndarray, loss: np.ndarray, num_budgets: int, c_ref: float) -> tuple[str, np.ndarray]:
    """(form, parameters) by `curve_fit`; the form follows the number of budgets (module docstring)."""
    x, y = np.asarray(compute, dtype=float) / c_ref, np.asarray(loss, dtype=float)
    if not (np.isfinite(x).all() and np.ptp(np.log(x)) > 0):  # e.g. every budget spent the same FLOPs
        raise ValueError("the compute does not vary across the budgets")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)  # the log-log line: a starting point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        if num_budgets >= MIN_BUDGETS_FOR_OFFSET:
            top = float(np.min(y))
            p0 = [max(float(np.max(y)) - 0.5 * top, 1e-6), max(-slope, 1e-3) * 2, 0.5 * top]
            params, _ = curve_fit(power_law_offset, x, y, p0=p0, bounds=([0, 0, 0], [np.inf, 5, top]),
                                  maxfev=20000)
            return FORM_OFFSET, params
        params, _ = curve_fit(power_law, x, y, p0=[math.exp(intercept), -slope], maxfev=20000)
        return FORM_POWER, params


def scaling_points(frames: SweepFrames, metric: str) -> pd.DataFrame:
    t = frames.trials
    done = t[(t["status"] == "completed") & np.isfinite(t[metric].astype(float))]
    return pd.DataFrame({"variant": done["variant"], "seed": done["seed"].astype(int),
                         "budget": done["budget_amount"].astype(float), "kind": done["budget_kind"],
                         "loss": done[metric].astype(float), "tokens": done["tokens"].astype(float),
                         "flops": done["flops"].astype(float),
                         "seconds": done["seconds"].astype(float)}).reset_index(drop=True)


def _fit_variant(rows: pd.DataFrame, num_budgets: int, c_ref: float, x: str = "flops") -> CurveFit | None:
    """`x`: the compute column, flops (the tables) or seconds (the seconds plot)."""
    if rows["budget"].nunique() < 2 or not np.isfinite(rows[x]).all():
        return None
    try:
        form, params = fit_curve(rows[x], rows["loss"], rows["budget"].nunique(), c_ref)
    except (RuntimeError, ValueError):  # no convergence: the table says so rather than print a bad curve
        return None
    per_seed = []
    for _, seed_rows in rows.groupby("seed"):
        if seed_rows["budget"].nunique() == rows["budget"].nunique():
            try:
                per_seed.append(fit_curve(seed_rows[x], seed_rows["loss"], num_budgets, c_ref)[1])
            except (RuntimeError, ValueError):
                continue
    seeds = np.array(per_seed) if per_seed else np.empty((0, len(params)))
    b, b_ci = stats.mean_ci(seeds[:, 1]) if len(seeds) else (float(params[1]), math.nan)
    c, c_ci = (stats.mean_ci(seeds[:, 2]) if len(seeds) else (float(params[2]), math.nan)) \
        if form == FORM_OFFSET else (math.nan, math.nan)
    return CurveFit(form=form, params=tuple(map(float, params)), c_ref=c_ref, b=b, b_ci=b_ci, c=c, c_ci=c_ci,
                    num_seeds=len(seeds))


def _trend_note(trend: Trend | None) -> str:
    """' (ahead, lead grows)' / ' (behind, gap holds)': a variant behind the baseline has a gap, not an advantage;
    the grow/hold/shrink word is still the slope of (baseline - variant) against compute."""
    if trend is None or not trend.advantage or trend.verdict not in ("grows", "holds", "shrinks"):
        return ""
    last = trend.advantage[max(trend.advantage)][0]
    side, word = ("ahead", "lead") if last > 0 else ("behind", "gap")
    change = {"grows": "shrinks", "shrinks": "grows"}.get(trend.verdict, trend.verdict) if last <= 0 else trend.verdict
    return f" ({side}, {word} {change})"


def advantage_trend(variant: pd.DataFrame, baseline: pd.DataFrame) -> Trend | None:
    """The paired advantage (baseline loss - variant loss, per seed and budget) against log10 budget."""
    def pivot(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.pivot_table(index="seed", columns="budget", values="loss")

    adv = pivot(baseline) - pivot(variant)
    adv = adv.dropna(how="all").dropna(axis=1, how="all")
    if adv.shape[1] < 2:
        return None
    budgets = np.array(adv.columns, dtype=float)
    slopes = []
    for _, row in adv.iterrows():
        ok = row.notna().to_numpy()
        if ok.sum() >= 2:
            slopes.append(np.polyfit(np.log10(budgets[ok]), row.to_numpy()[ok], 1)[0])
    slope, slope_ci = stats.mean_ci(slopes)
    if len(slopes) == 1 and adv.notna().sum(axis=1).iloc[0] >= 3:  # one seed: the regression's own interval
        row = adv.iloc[0].dropna()
        fit = sps.linregress(np.log10(np.array(row.index, dtype=float)), row.to_numpy())
        slope_ci = float(sps.t.ppf(0.5 + stats.CONFIDENCE / 2, len(row) - 2)) * fit.stderr
    mean = {float(b): stats.mean_ci(adv[b]) for b in adv.columns}
    if math.isnan(slope_ci):
        verdict = "n=1, no CI"
    elif slope - slope_ci > 0:
        verdict = "grows"
    elif slope + slope_ci < 0:
        verdict = "shrinks"
    else:
        verdict = "holds"
    crossing, note = _crossing(mean, verdict)
    return Trend(advantage=mean, slope=float(slope), slope_ci=float(slope_ci), verdict=verdict, crossing=crossing,
                 crossing_note=note)


def _crossing(mean: dict[float, tuple[float, float]], verdict: str) -> tuple[float, str]:
    """Where the line through the mean advantage against log10 budget reaches zero, ahead of the data."""
    if verdict in ("holds", "n=1, no CI"):
        return math.nan, "— (no trend)" if verdict == "holds" else "—"
    logs = np.log10(list(mean))
    values = np.array([m for m, _ in mean.values()])
    slope, intercept = np.polyfit(logs, values, 1)
    at = 10 ** (-intercept / slope)
    if at > max(mean):
        return float(at), "extrapolated"
    if at >= min(mean):
        return float(at), "within the measured range"
    return math.nan, "— (moving apart)"


def scaling_view(frames: SweepFrames) -> ScalingView:
    metric = choose_loss_metric(frames.trials) if len(frames.trials) else "eval_loss"
    points = scaling_points(frames, metric) if len(frames.trials) else pd.DataFrame()
    budgets = sorted(points["budget"].unique()) if len(points) else []
    if len(budgets) < 2:
        raise ScalingError(f"sweep {frames.name!r} has completed trials at {len(budgets)} budget(s); the scaling "
                           f"view needs two or more: python -m sweeps run {frames.name} --budgets 60s,120s,240s")
    kinds = sorted(points["kind"].dropna().unique())
    if len(kinds) != 1:
        raise ScalingError(f"sweep {frames.name!r} mixes budget kinds ({', '.join(kinds)}); the scaling view "
                           "reads one kind")
    labels = {float(b["amount"]): b.get("text", "") for b in frames.definition.get("budgets") or []}
    labels = {b: labels.get(b) or format_budget(kinds[0], b) for b in budgets}
    baseline = baseline_variant(frames.trials)
    c_ref = float(points.loc[points["budget"] == budgets[0], "flops"].mean())
    order = [v for v in variant_order(frames.trials, baseline) if v in set(points["variant"])]
    fits = {v: _fit_variant(points[points["variant"] == v], len(budgets), c_ref) for v in order}
    trends = {}
    if baseline is not None and baseline in fits:
        base_rows = points[points["variant"] == baseline]
        for v in order:
            if v != baseline and (trend := advantage_trend(points[points["variant"] == v], base_rows)):
                trends[v] = trend
    return ScalingView(name=frames.name, kind=kinds[0], budgets=[float(b) for b in budgets], labels=labels,
                       baseline=baseline, metric=metric, points=points, fits=fits, trends=trends)


def stored_budgets(frames: SweepFrames) -> list[tuple[str, float]]:
    """The distinct (kind, amount) budgets of the sweep's trials that have one."""
    t = frames.trials.dropna(subset=["budget_kind", "budget_amount"])
    return sorted({(str(k), float(a)) for k, a in zip(t["budget_kind"], t["budget_amount"])}, key=lambda b: b[1])


def at_budget(frames: SweepFrames, text: str | None) -> SweepFrames:
    """The sweep's trials at one budget (`analysis table --budget`), so a one-budget table of a sweep run at
    several never reads the budgets as extra seeds. Without `text` the sweep must have one budget."""
    budgets = stored_budgets(frames)
    listed = ", ".join(format_budget(k, a) for k, a in budgets)
    if text is None:
        raise ScalingError(f"sweep {frames.name!r} ran at {len(budgets)} budgets ({listed}): give --budget B for a "
                           f"table at one of them, or see python -m analysis scaling {frames.name}")
    try:
        ((key, amount),) = parse_budget(text).items()
    except ConfigError as e:
        raise ScalingError(str(e)) from None
    kind = key.split(".")[1]
    t = frames.trials
    keep = (t["budget_kind"] == kind) & np.isclose(t["budget_amount"].astype(float), amount, rtol=1e-9, atol=0)
    if not keep.any():
        raise ScalingError(f"sweep {frames.name!r} has no trials at budget {text!r}; its budgets: {listed or 'none'}")
    ids = set(t.loc[keep, "trial_id"])
    return dataclasses.replace(frames, trials=t[keep], metrics=frames.metrics[frames.metrics["trial_id"].isin(ids)],
                               evals=frames.evals[frames.evals["trial_id"].isin(ids)])


# ---------------------------------------------------------------- tables


def _sci(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:.3g}"


def _pm(mean: float, ci: float) -> str:
    return "—" if not np.isfinite(mean) else f"{mean:.3f}" + ("" if not np.isfinite(ci) else f" ± {ci:.3f}")


def loss_table(view: ScalingView) -> Table:
    rows = []
    for v, group in view.points.groupby("variant", sort=False):
        for b, at in group.groupby("budget"):
            loss, ci = stats.mean_ci(at["loss"])
            rows.append({"variant": v, "budget": view.labels[b], "seeds": str(len(at)), "loss": fmt_loss(loss, ci),
                         "tokens": fmt_count(at["tokens"].mean()), "FLOPs": _sci(at["flops"].mean()),
                         "seconds": f"{at['seconds'].mean():.1f}"})
    order = {v: i for i, v in enumerate(view.fits)}
    display = pd.DataFrame(rows).sort_values("variant", key=lambda s: s.map(order), kind="stable")
    caption = f"{view.name}: {view.metric} (mean ± 95% t CI over seeds) against compute, per budget. "
    spread = throughput_spread_pct(view)
    if spread > NOISY_THROUGHPUT_PCT:
        caption += (f"Unreliable seconds: tokens/s of one variant varied by up to {spread:.1f}% between its trials "
                    f"(> {NOISY_THROUGHPUT_PCT:.0f}%), so the machine, not the variant, set the seconds column and the "
                    "loss-vs-seconds plot")
    elif np.isfinite(spread):
        caption += f"tokens/s of one variant varied by ≤ {spread:.1f}% between its trials"
    return Table(caption=caption.strip(), display=display.reset_index(drop=True), raw=view.points)


def throughput_spread_pct(view: ScalingView) -> float:
    """The largest spread of tokens/s among one variant's trials (every seed and budget: the cost per token
    does not depend on the budget), as `analysis table` reads it between seeds; NaN where nothing has two."""
    tps = view.points["tokens"] / view.points["seconds"]
    spreads = [spread_pct(tps[view.points["variant"] == v]) for v in view.fits]
    return float(np.nanmax(spreads)) if np.isfinite(spreads).any() else math.nan


def fit_table(view: ScalingView) -> Table:
    rows = []
    for v, fit in view.fits.items():
        if fit is None:
            rows.append({"variant": v, "form": "no fit", "b": "—", "c": "—", "seeds fitted": "0",
                         "loss at largest": "—"})
            continue
        largest = view.points.loc[(view.points["variant"] == v) & (view.points["budget"] == view.budgets[-1]), "flops"]
        rows.append({"variant": v, "form": fit.form, "b": _pm(fit.b, fit.b_ci),
                     "c": _pm(fit.c, fit.c_ci), "seeds fitted": str(fit.num_seeds),
                     "loss at largest": f"{float(fit.predict(largest.mean())):.3f}" if len(largest) else "—"})
    caption = (f"{view.name}: fitted curves, C = model FLOPs; b and c are the mean over per-seed fits ± 95% t CI. "
               f"{FORM_POWER} with 2-3 budgets (b is the local log-log slope), {FORM_OFFSET} with 4+")
    return Table(caption=caption, display=pd.DataFrame(rows), raw=pd.DataFrame(rows))


def trend_table(view: ScalingView) -> Table:
    rows = []
    for v, t in view.trends.items():
        row = {"variant": v}
        for b in view.budgets:
            m, ci = t.advantage.get(b, (math.nan, math.nan))
            row[f"adv. @ {format_budget(view.kind, b)}"] = fmt_delta(m, ci)
        crossing = f"{format_budget(view.kind, t.crossing)} ({t.crossing_note})" if np.isfinite(t.crossing) \
            else t.crossing_note
        rows.append(row | {"slope / decade": fmt_delta(t.slope, t.slope_ci), "verdict": t.verdict,
                           "crosses baseline at": crossing})
    caption = (f"{view.name}: advantage = {view.baseline} loss − variant loss, paired by seed (positive: better); "
               "verdict from the slope of the advantage against log10 budget (mean over seeds ± 95% t CI): "
               "grows (> 0), shrinks (< 0), holds (CI contains 0). A crossing beyond the largest budget is an "
               "extrapolation of that straight line")
    return Table(caption=caption, display=pd.DataFrame(rows), raw=pd.DataFrame(rows))


def scaling_tables(view: ScalingView) -> list[Table]:
    tables = [loss_table(view), fit_table(view)]
    if view.trends:
        tables.append(trend_table(view))
    return tables


def view_text(view: ScalingView) -> str:
    return "\n\n".join(to_markdown(t) for t in scaling_tables(view))


def scaling_text(store: Store, name: str) -> str:
    return view_text(scaling_view(load_sweep(store, name)))


# ---------------------------------------------------------------- plot


def _fits_against(view: ScalingView, x: str) -> dict[str, CurveFit | None]:
    if x == "flops":
        return view.fits
    points = view.points
    c_ref = float(points.loc[points["budget"] == view.budgets[0], x].mean())
    return {v: _fit_variant(points[points["variant"] == v], len(view.budgets), c_ref, x) for v in view.fits}


def scaling_figure(view: ScalingView, x: str = "flops") -> Any:
    """Log-log loss against compute (`x`: flops or seconds), one panel per variant: each seed's points, the
    fitted curve, and the baseline's fit dashed for reference."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from analysis.plots import NothingToPlot, _new_figure

    axis_name = {"flops": "training FLOPs", "seconds": "training seconds"}[x]
    points = view.points[np.isfinite(view.points[x]) & (view.points[x] > 0)]
    if points.empty:  # e.g. trials of a trainer that records no FLOPs
        raise NothingToPlot(f"no trial of sweep {view.name!r} recorded its {axis_name}: no log-log plot against them")
    fits = _fits_against(view, x)
    variants = list(fits)
    cols = min(3, len(variants))
    rows = math.ceil(len(variants) / cols)
    fig = _new_figure(4.0 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    grid = np.geomspace(points[x].min() / 1.3, points[x].max() * 1.3, 100)
    base_fit = fits.get(view.baseline) if view.baseline else None
    # under its own kind the x axis is the budgets: a tick at each, one that would crowd the last left out; other
    # x (seconds of a FLOP budget) do not sit at the budgets (packing, the machine), so round values instead
    ticks: list[float] = []
    if x == view.kind or x == "flops":
        min_step = 0.12 * math.log(grid[-1] / grid[0])
        for t in sorted(points.groupby("budget")[x].mean()):
            if not ticks or math.log(t / ticks[-1]) > min_step:
                ticks.append(float(t))
    for ax, v in zip(axes, variants):
        rows_v = points[points["variant"] == v]
        ax.scatter(rows_v[x], rows_v["loss"], s=14, color="tab:blue", label="trials (each seed)")
        fit = fits[v]
        if fit is not None:
            ax.plot(grid, fit.predict(grid), color="tab:blue", label=f"{fit.form}, b={fit.b:.3f}")
        if base_fit is not None and v != view.baseline:
            ax.plot(grid, base_fit.predict(grid), color="black", ls="--", lw=1, label=f"{view.baseline} fit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # ticks at the measured budgets and plain loss values: a narrow log range otherwise labels minor ticks
        # in overlapping scientific notation
        if ticks:
            ax.set_xticks(ticks, [_tick(t) for t in ticks])
        else:
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
        ax.set_title(v + _trend_note(view.trends.get(v)), fontsize=9)
        ax.set_xlabel(axis_name)
        ax.set_ylabel(view.metric)
        ax.legend(fontsize=7)
    for ax in axes[:len(variants)]:  # sharex hides them above the last row, also over an empty panel
        ax.tick_params(axis="x", labelbottom=True)
    for ax in axes[len(variants):]:
        ax.set_visible(False)
    return fig


FIGURE_CAPTIONS = {
    "flops": "Held-out loss against training FLOPs, log-log, one panel per variant: each trial a dot (every seed "
             "at every budget), the curve fitted to them, the baseline's fit dashed.",
    "seconds": "The same against training seconds (budget clock): what the FLOPs cost on this machine.",
}
"page caption of each figure, by its x axis"


def page_parts(frames: SweepFrames, stem: str) -> tuple[str, str, dict[str, Any], list[str]]:
    """What `analysis results` puts on the page of a sweep run at several budgets, in place of one budget's
    table: (budgets line, the scaling tables as Markdown, figures by file name, the figures' page lines)."""
    from analysis.plots import NothingToPlot

    view = scaling_view(frames)
    budgets = "; ".join(view.labels[b] for b in view.budgets) + f" ({len(view.budgets)} budgets, {view.kind})"
    figures: dict[str, Any] = {}
    lines: list[str] = []
    for x, caption in FIGURE_CAPTIONS.items():
        file_name = f"{stem}-{'scaling' if x == 'flops' else 'scaling-' + x}.png"
        try:
            figures[file_name] = scaling_figure(view, x)
        except NothingToPlot as e:
            lines += [str(e), ""]
            continue
        lines += [f"![{view.name}: loss vs {x}, log-log]({file_name})", "", f"*{caption}*", ""]
    return budgets, view_text(view), figures, lines


def _tick(value: float) -> str:
    """A short tick label: '7.3e15' rather than '7.3e+15', which neighbours 1.33x apart would overlap."""
    text = f"{value:.2g}"
    return text.replace("e+0", "e").replace("e+", "e")


def plot_scaling(view: ScalingView, out_dir: Path) -> list[Path]:
    """The log-log figures against FLOPs and seconds (PNG + SVG); one that has nothing to draw raises
    NothingToPlot before anything is written."""
    from analysis.plots import save

    figures = {"scaling": scaling_figure(view), "scaling_seconds": scaling_figure(view, "seconds")}
    return [path for stem, fig in figures.items() for path in save(fig, out_dir, stem)]
