"""Figures for one sweep and for all sweeps, written as PNG and SVG.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas instead of pyplot: no global backend
switch (a notebook importing this keeps its inline backend) and no figure registry to leak in long sessions.
Every file is saved with ``bbox_inches="tight"``, so labels outside the axes are never cut off.

What the loss figure shows, and why:
- Lines are the logged *train* loss, lightly smoothed (centred rolling mean over ~2% of the points) so the
  shape stays honest. Diamonds at the end are the *held-out* loss (fixed 15% masking, the same sequences in
  every trial: the number the table ranks by), mean over seeds with its 95% t interval.
- Seeds are aligned on budget progress p: each seed is sampled at the same p and drawn at the mean over seeds
  of its tokens (or seconds) at that p. So a variant's curve spans its whole budget, ending at the mean
  tokens its seeds saw, instead of stopping where the shortest seed stopped. The band is min-max over seeds
  (with 2-5 seeds a std band would itself be noise). Diverged seeds are drawn on their own, dashed.
- More than six variants on one axis are unreadable: the figure becomes small multiples, one panel per
  variant against the baseline.
- LR and batch size are drawn from the schedule functions (`cram_core.schedules`) over p in [0, 1], from each
  variant's stored config, so warm-up and sharp turns show whatever the logging interval; a panel is left out
  when every variant has the same schedule.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from analysis import stats, tables
from analysis.load import SweepFrames, Store, load_sweep
from cram_core.config import ConfigError, TrainConfig
from cram_core.schedules import batch_size_at, lr_factor

X_AXES = {"tokens": "tokens seen", "seconds": "training seconds (budget clock)"}
GRID_POINTS = 200
SCHEDULE_POINTS = 501
SMOOTH_FRACTION = 0.02
MAX_VARIANTS_ON_ONE_AXIS = 6
PANEL_COLUMNS = 3
VERDICT_COLORS = {"helped": "tab:green", "hurt": "tab:red"}
NEUTRAL_COLOR = "tab:gray"
PLOTTED_STATUSES = ("completed", "diverged")
HELD_OUT_MARKER = "D"


class NothingToPlot(ValueError):
    """The sweep has no data for this figure; the message is one line."""


# ---------------------------------------------------------------------------------------------- curves


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SeedCurve:
    progress: np.ndarray
    x: np.ndarray
    loss: np.ndarray
    "smoothed"


def smooth(values: np.ndarray, fraction: float = SMOOTH_FRACTION) -> np.ndarray:
    window = max(1, int(round(len(values) * fraction)))
    if window == 1:
        return np.asarray(values, dtype=float)
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy(float)


def seed_curves(points: pd.DataFrame, x: str) -> list[SeedCurve]:
    """One curve per trial, NaN losses dropped, in progress order."""
    curves = []
    for _, trial in points.groupby("trial_id", sort=True):
        trial = trial.dropna(subset=["progress", x, "loss"]).sort_values("progress")
        if len(trial):
            curves.append(SeedCurve(progress=trial["progress"].to_numpy(float), x=trial[x].to_numpy(float),
                                    loss=smooth(trial["loss"].to_numpy(float))))
    return curves


def mean_band(curves: list[SeedCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) of seeds aligned on progress; x is the mean over seeds of x at each p."""
    if len(curves) == 1:
        c = curves[0]
        return c.x, c.loss, c.loss, c.loss
    start = max(c.progress[0] for c in curves)
    stop = min(c.progress[-1] for c in curves)
    if stop <= start:  # seeds logged disjoint stretches of the budget; an average would be invented
        empty = np.array([])
        return empty, empty, empty, empty
    grid = np.linspace(start, stop, GRID_POINTS)
    xs = np.vstack([np.interp(grid, c.progress, c.x) for c in curves])
    ys = np.vstack([np.interp(grid, c.progress, c.loss) for c in curves])
    return xs.mean(axis=0), ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def held_out_points(trials: pd.DataFrame, x: str) -> dict[str, tuple[float, float, float]]:
    """Per variant: (mean x at the end, mean held-out loss, 95% CI half-width; NaN with one seed)."""
    done = trials[(trials["status"] == "completed") & trials["eval_loss"].notna() & trials[x].notna()]
    out = {}
    for variant, runs in done.groupby("variant", sort=False):
        mean, ci = stats.mean_ci(runs["eval_loss"].to_numpy(float))
        out[variant] = (float(runs[x].mean()), mean, ci)
    return out


def variant_colors(variants: list[str], baseline: str | None) -> dict[str, object]:
    """Baseline black and first (so it heads the legend); the others from a qualitative palette."""
    others = [v for v in variants if v != baseline]
    cmap = colormaps["tab10" if len(others) <= 10 else "tab20"]
    colors: dict[str, object] = {baseline: "black"} if baseline is not None else {}
    colors |= {v: cmap(i % cmap.N) for i, v in enumerate(others)}
    return colors


# ------------------------------------------------------------------------------------------- schedules

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _train_config(row: pd.Series) -> Any:
    """The trial's TrainConfig from its flattened config columns; None when they don't make a valid one."""
    values = {}
    for name, spec in _TRAIN_FIELDS.items():
        value = row.get(f"train.{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        default = spec.default
        # a pandas column holding ints and NaNs reads back as floats
        values[name] = int(value) if isinstance(default, int) and not isinstance(default, bool) else value
    try:
        return TrainConfig(**values)
    except (ConfigError, TypeError, ValueError):
        return None


def schedule_curves(trials: pd.DataFrame, variants: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{"lr": {variant: values}, "batch": {...}} over p in [0, 1], from each variant's first trial's config;
    a variant whose config is incomplete (or whose schedule is unknown) is left out."""
    p = np.linspace(0.0, 1.0, SCHEDULE_POINTS)
    out: dict[str, dict[str, np.ndarray]] = {"lr": {}, "batch": {}}
    for variant in variants:
        runs = trials[trials["variant"] == variant].sort_values("trial_id")
        if runs.empty:
            continue
        row = runs.iloc[0]
        cfg = _train_config(row)
        peak = row.get("optim.lr")
        if cfg is None:
            continue
        try:
            if isinstance(peak, (int, float)) and math.isfinite(peak):
                out["lr"][variant] = peak * np.array([lr_factor(cfg, q) for q in p])
            out["batch"][variant] = np.array([batch_size_at(cfg, q) for q in p], dtype=float)
        except ValueError:  # an unknown schedule name in a foreign store
            out["lr"].pop(variant, None)
    return out


def varying(curves: dict[str, np.ndarray]) -> bool:
    """Whether the variants' schedules differ; one identical line per variant is a panel with nothing in it."""
    values = list(curves.values())
    return len(values) > 1 and any(not np.allclose(v, values[0]) for v in values[1:])


def _draw_schedules(axes: list[Axes], panels: list[str], curves: dict[str, dict[str, np.ndarray]],
                    colors: dict[str, object]) -> None:
    p = np.linspace(0.0, 1.0, SCHEDULE_POINTS)
    labels = {"lr": "learning rate", "batch": "batch size (seqs)"}
    for ax, panel in zip(axes, panels, strict=True):
        # reversed so the baseline (first in colors) is drawn last, on top of variants sharing its schedule
        for variant, color in reversed(list(colors.items())):
            if variant in curves[panel]:
                draw = ax.step if panel == "batch" else ax.plot
                kwargs = {"where": "post"} if panel == "batch" else {}
                draw(p, curves[panel][variant], color=color, lw=1.2, **kwargs)
        ax.set_ylabel(labels[panel])
        if panel == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_xlim(0, 1)
        ax.set_xlabel("progress p")
        ax.grid(alpha=0.3)


# --------------------------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    # text stays text in the SVG (searchable, editable, smaller) instead of one path per glyph
    with rc_context({"svg.fonttype": "none"}):
        fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _draw_variant(ax: Axes, points: pd.DataFrame, variant: str, color: object, x: str,
                  held_out: dict[str, tuple[float, float, float]], *, emphasis: bool) -> list[float]:
    """One variant's train curve (mean, band), diverged seeds and held-out end point; returns y values that
    should fit in the axis (diverged tails may not)."""
    mine = points[points["variant"] == variant]
    completed = seed_curves(mine[mine["status"] == "completed"], x)
    diverged = seed_curves(mine[mine["status"] == "diverged"], x)
    visible: list[float] = []
    if completed:
        grid, mean, low, high = mean_band(completed)
        if len(grid):
            # the baseline is what every other line is read against: thicker and drawn on top
            ax.plot(grid, mean, color=color, lw=2.2 if emphasis else 1.5, zorder=3 if emphasis else 2,
                    label=f"{variant} (n={len(completed)})")
            if len(completed) > 1:
                ax.fill_between(grid, low, high, color=color, alpha=0.18, lw=0)
            # the first 5% of the run is the init plateau; letting it set the y range flattens the comparison
            tail = grid >= grid[0] + 0.05 * (grid[-1] - grid[0])
            visible += [float(np.nanmin(low)), float(np.nanmax(high[tail]))]
    for i, c in enumerate(diverged):
        ax.plot(c.x, c.loss, color=color, lw=1.0, ls="--", alpha=0.8, label=f"{variant} (diverged)" if i == 0 else None)
    if variant in held_out:
        end_x, mean, ci = held_out[variant]
        ax.errorbar(end_x, mean, yerr=ci if math.isfinite(ci) else None, fmt=HELD_OUT_MARKER, color=color,
                    mfc="white", mew=1.5, ms=6, capsize=3, zorder=4)
        visible += [mean - (ci if math.isfinite(ci) else 0.0), mean + (ci if math.isfinite(ci) else 0.0)]
    return visible


def _finish_loss_axes(ax: Axes, x: str, visible: list[float]) -> None:
    if visible:
        low, high = min(visible), max(visible)
        margin = 0.05 * max(high - low, 1e-3)
        ax.set_ylim(low - margin, high + margin)
    ax.xaxis.set_major_formatter(EngFormatter(unit="" if x == "tokens" else "s"))
    ax.grid(alpha=0.3)


def _held_out_legend_entry() -> Line2D:
    return Line2D([], [], marker=HELD_OUT_MARKER, ls="", color="black", mfc="white",
                  label="held-out loss at the end (mean, 95% CI)")


def loss_figure(frames: SweepFrames, x: str = "tokens") -> Figure:
    """Loss against tokens or seconds, with LR and batch-size panels where the variants' schedules differ."""
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}; valid: {', '.join(X_AXES)}")
    if frames.metrics["loss"].notna().sum() == 0:
        raise NothingToPlot(f"sweep {frames.name!r}: no logged loss points to plot")
    baseline = tables.baseline_variant(frames.trials)
    variants = tables.variant_order(frames.trials, baseline)
    colors = variant_colors(variants, baseline)
    schedules = schedule_curves(frames.trials, variants)
    panels = [name for name in ("lr", "batch") if varying(schedules[name])]
    points = frames.metrics[frames.metrics["status"].isin(PLOTTED_STATUSES)]
    held_out = held_out_points(frames.trials, x)
    title = f"{frames.name}: loss vs {x} (lines: train loss, mean over seeds, band = min–max)"
    if len(variants) > MAX_VARIANTS_ON_ONE_AXIS:
        return _small_multiples(frames, x, points, held_out, colors, baseline, schedules, panels, title)
    fig = _new_figure(11 if panels else 8.5, 5.5)
    grid = fig.add_gridspec(max(1, len(panels)), 2 if panels else 1, width_ratios=[3, 1] if panels else [1])
    ax = fig.add_subplot(grid[:, 0])
    visible: list[float] = []
    for variant, color in colors.items():
        visible += _draw_variant(ax, points, variant, color, x, held_out, emphasis=variant == baseline)
    _finish_loss_axes(ax, x, visible)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("MLM loss: train (smoothed) and held-out")
    ax.set_title(title, fontsize="medium")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + ([_held_out_legend_entry()] if held_out else []), fontsize="small", loc="best")
    _draw_schedules([fig.add_subplot(grid[i, 1]) for i in range(len(panels))], panels, schedules, colors)
    return fig


def _small_multiples(frames: SweepFrames, x: str, points: pd.DataFrame, held_out: dict, colors: dict,
                     baseline: str | None, schedules: dict, panels: list[str], title: str) -> Figure:
    """One panel per variant (its own colour) over the baseline (black), shared axes; schedules below."""
    others = [v for v in colors if v != baseline]
    rows = math.ceil(len(others) / PANEL_COLUMNS)
    fig = _new_figure(4.2 * PANEL_COLUMNS, 3.0 * rows + (2.6 if panels else 0.4))
    grid = fig.add_gridspec(rows + (1 if panels else 0), PANEL_COLUMNS)
    axes: list[Axes] = []
    for i in range(len(others)):  # shared before drawing, so the x range holds every panel's curves
        axes.append(fig.add_subplot(grid[i // PANEL_COLUMNS, i % PANEL_COLUMNS], sharex=axes[0] if axes else None))
    visible: list[float] = []
    for ax, variant in zip(axes, others, strict=True):
        if baseline is not None:
            visible += _draw_variant(ax, points, baseline, colors[baseline], x, held_out, emphasis=False)
        visible += _draw_variant(ax, points, variant, colors[variant], x, held_out, emphasis=True)
        ax.set_title(variant, fontsize="medium", color=colors[variant])
    for i, ax in enumerate(axes):
        _finish_loss_axes(ax, x, visible)
        if i % PANEL_COLUMNS == 0:
            ax.set_ylabel("MLM loss")
        if i >= len(others) - PANEL_COLUMNS:
            ax.set_xlabel(X_AXES[x])
    legend = [Line2D([], [], color=colors[baseline], lw=1.5, label=f"{baseline} (in every panel)")] \
        if baseline is not None else []
    fig.legend(handles=legend + [_held_out_legend_entry()], loc="outside lower center", fontsize="small", ncols=2)
    fig.suptitle(title, fontsize="medium")
    if panels:
        sub = grid[rows, :].subgridspec(1, len(panels))
        _draw_schedules([fig.add_subplot(sub[0, i]) for i in range(len(panels))], panels, schedules, colors)
    return fig


def throughput_figure(summary: tables.SweepSummary) -> Figure:
    """Mean tokens/s per variant (error bar = std over seeds), annotated with Δ% against the baseline."""
    rows = summary.rows[summary.rows["tokens_per_second_mean"].notna()]
    if rows.empty:
        raise NothingToPlot(f"sweep {summary.name!r}: no completed trial reports throughput")
    colors = variant_colors(rows["variant"].tolist(), summary.baseline)
    fig = _new_figure(8, 0.9 + 0.4 * len(rows))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))[::-1]  # first row (the baseline) on top
    values = rows["tokens_per_second_mean"].to_numpy(float)
    errors = rows["tokens_per_second_std"].fillna(0.0).to_numpy(float)
    ax.barh(positions, values, xerr=errors, color=[colors[v] for v in rows["variant"]], alpha=0.85, capsize=3)
    # the Δ% column sits just right of the axes (axes coordinates, so no bar or error bar can reach it);
    # constrained layout leaves it room on screen and bbox_inches="tight" keeps it in the files
    for pos, (_, row) in zip(positions, rows.iterrows(), strict=True):
        note = "baseline" if row["is_baseline"] else tables.fmt_throughput_delta(row)  # n.s. unless significant
        ax.annotate(note, xy=(1.02, pos), xycoords=("axes fraction", "data"), va="center", fontsize="small",
                    annotation_clip=False)
    if summary.baseline is not None and (rows["is_baseline"]).any():
        ax.axvline(float(values[rows["is_baseline"].to_numpy()][0]), color="black", lw=0.8, ls=":")
    ax.set_yticks(positions, rows["variant"].tolist())
    ax.set_xlabel("tokens / second (mean over completed seeds, error bar = std)")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlim(0, float((values + errors).max()) * 1.05)
    noisy = (f"; unreliable: tokens/s of one config varied {summary.throughput_spread_pct:.0f}% between seeds"
             if summary.noisy_throughput else "")
    ax.set_title(f"{summary.name}: throughput (Δ% vs baseline at the right{noisy})")
    ax.grid(axis="x", alpha=0.3)
    return fig


def summary_figure(comparisons: pd.DataFrame) -> Figure:
    """Δ loss with 95% CI for every variant of every sweep, sorted; hollow markers have one seed (no CI)."""
    if comparisons.empty:
        raise NothingToPlot("no sweep has a variant with a completed comparison against its baseline")
    ordered = comparisons.sort_values("delta_loss", ascending=False).reset_index(drop=True)
    fig = _new_figure(9, 1.2 + 0.32 * len(ordered))
    ax = fig.add_subplot()
    for pos, row in ordered.iterrows():
        color = VERDICT_COLORS.get(row["verdict"], NEUTRAL_COLOR)
        has_ci = bool(np.isfinite(row["delta_ci95"]))
        ax.errorbar(row["delta_loss"], pos, xerr=row["delta_ci95"] if has_ci else None, fmt="o", color=color,
                    mfc=color if has_ci else "white", capsize=3, ms=5)
    ax.axvline(0.0, color="black", lw=0.8)
    # sweeps whose trials lack eval_loss are compared on train loss; say so where the point is read
    labels = [f"{row.sweep}: {row.variant}" + ("" if row.loss_metric == "eval_loss" else f" ({row.loss_metric})")
              for row in ordered.itertuples()]
    ax.set_yticks(np.arange(len(ordered)), labels)
    ax.set_ylim(-0.7, len(ordered) - 0.3)
    ax.set_xlabel("Δ loss vs the sweep's baseline (negative = better), 95% CI (paired per seed)")
    ax.set_title("All sweeps: effect on loss")
    ax.grid(axis="x", alpha=0.3)
    legend = [Line2D([], [], marker="o", ls="", color=VERDICT_COLORS["helped"], label="helped (p < 0.05)"),
              Line2D([], [], marker="o", ls="", color=VERDICT_COLORS["hurt"], label="hurt (p < 0.05)"),
              Line2D([], [], marker="o", ls="", color=NEUTRAL_COLOR, label="not significant / other"),
              Line2D([], [], marker="o", ls="", color=NEUTRAL_COLOR, mfc="white", label="one seed: Δ only")]
    ax.legend(handles=legend, fontsize="small", loc="best")
    return fig


# ------------------------------------------------------------------------------------------ entry points


def default_out_dir(sweep_name: str) -> Path:
    return Path("plots") / sweep_name


def sweep_figures(frames: SweepFrames, x: str = "tokens") -> dict[str, Figure]:
    """The sweep's figures by file stem: loss_vs_{x} for each axis asked (tokens, seconds or both) and
    throughput when a completed trial reports it. Raises ``NothingToPlot`` without any loss point."""
    axes = list(X_AXES) if x == "both" else [x]
    figures = {f"loss_vs_{axis}": loss_figure(frames, axis) for axis in axes}
    if (frames.trials["status"] == "completed").any():
        summary = tables.summarize(frames)
        if summary.rows["tokens_per_second_mean"].notna().any():
            figures["throughput"] = throughput_figure(summary)
    return figures


def plot_sweep(store: Store, sweep_name: str, *, x: str = "tokens", out_dir: Path | str | None = None,
               frames: SweepFrames | None = None) -> list[Path]:
    """Write the sweep's figures (`sweep_figures`), PNG + SVG; return the paths."""
    frames = frames if frames is not None else load_sweep(store, sweep_name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(sweep_name)
    written: list[Path] = []
    for stem, fig in sweep_figures(frames, x).items():
        written += save(fig, out, stem)
    return written


def plot_summary(store: Store, *, out_dir: Path | str = Path("plots")) -> list[Path]:
    return save(summary_figure(tables.all_comparisons(store)), Path(out_dir), "summary")
