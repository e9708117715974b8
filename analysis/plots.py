"""Figures for one sweep and for all sweeps, written as PNG and SVG.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas instead of pyplot: no global backend
switch (a notebook importing this keeps its inline backend) and no figure registry to leak in long sessions.

Curves are the logged train loss, lightly smoothed (centred rolling mean over ~2% of the points) so the shape
stays honest. Per variant the line is the mean over seeds, interpolated onto a shared grid where every seed
has data, and the band spans min-max over seeds (with 2-5 seeds a std band would itself be noise). Diverged
seeds are drawn on their own, dashed, and left out of the mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from analysis import tables
from analysis.load import SweepFrames, Store, load_sweep

X_AXES = {"tokens": "tokens seen", "seconds": "training seconds (budget clock)"}
GRID_POINTS = 200
SMOOTH_FRACTION = 0.02
VERDICT_COLORS = {"helped": "tab:green", "hurt": "tab:red"}
NEUTRAL_COLOR = "tab:gray"
PLOTTED_STATUSES = ("completed", "diverged")


class NothingToPlot(ValueError):
    """The sweep has no data for this figure; the message is one line."""


# ---------------------------------------------------------------------------------------------- curves


def smooth(values: np.ndarray, fraction: float = SMOOTH_FRACTION) -> np.ndarray:
    window = max(1, int(round(len(values) * fraction)))
    if window == 1:
        return np.asarray(values, dtype=float)
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy(float)


def seed_curves(points: pd.DataFrame, x: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (x, smoothed loss) pair per trial, NaN losses dropped, sorted by x."""
    curves = []
    for _, trial in points.groupby("trial_id", sort=True):
        trial = trial.dropna(subset=[x, "loss"]).sort_values(x)
        if len(trial):
            curves.append((trial[x].to_numpy(float), smooth(trial["loss"].to_numpy(float))))
    return curves


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, mean, low, high) on the x range every seed covers; a single seed is returned as is."""
    if len(curves) == 1:
        xs, ys = curves[0]
        return xs, ys, ys, ys
    start = max(xs[0] for xs, _ in curves)
    stop = min(xs[-1] for xs, _ in curves)
    if stop <= start:  # seeds logged disjoint ranges; an average would be invented
        empty = np.array([])
        return empty, empty, empty, empty
    grid = np.linspace(start, stop, GRID_POINTS)
    stacked = np.vstack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0)


def variant_colors(variants: list[str], baseline: str | None) -> dict[str, object]:
    """Baseline black and first (so it heads the legend); the others from a qualitative palette."""
    others = [v for v in variants if v != baseline]
    cmap = colormaps["tab10" if len(others) <= 10 else "tab20"]
    colors: dict[str, object] = {baseline: "black"} if baseline is not None else {}
    colors |= {v: cmap(i % cmap.N) for i, v in enumerate(others)}
    return colors


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    # text stays text in the SVG (searchable, editable, smaller) instead of one path per glyph
    with rc_context({"svg.fonttype": "none"}):
        fig.savefig(paths[1])
    return paths


# --------------------------------------------------------------------------------------------- figures


def _draw_loss(ax: Axes, frames: SweepFrames, x: str, colors: dict[str, object]) -> list[float]:
    """Draw every variant; return the y values that should fit in the axis (diverged tails may not)."""
    points = frames.metrics[frames.metrics["status"].isin(PLOTTED_STATUSES)]
    visible: list[float] = []
    for variant, color in colors.items():
        mine = points[points["variant"] == variant]
        completed = seed_curves(mine[mine["status"] == "completed"], x)
        diverged = seed_curves(mine[mine["status"] == "diverged"], x)
        if completed:
            grid, mean, low, high = mean_band(completed)
            is_baseline = color == "black"
            # the baseline is what every other line is read against: thicker and drawn on top
            ax.plot(grid, mean, color=color, lw=2.2 if is_baseline else 1.5, zorder=3 if is_baseline else 2,
                    label=f"{variant} (n={len(completed)})")
            if len(completed) > 1:
                ax.fill_between(grid, low, high, color=color, alpha=0.18, lw=0)
            # the first 5% of the run is the init plateau; letting it set the y range flattens the comparison
            tail = grid >= grid[0] + 0.05 * (grid[-1] - grid[0])
            visible += [float(np.nanmin(low)), float(np.nanmax(high[tail]))]
        for i, (xs, ys) in enumerate(diverged):
            label = f"{variant} (diverged)" if i == 0 else None
            ax.plot(xs, ys, color=color, lw=1.0, ls="--", alpha=0.8, label=label)
    return visible


def _draw_schedule(ax_lr: Axes, ax_bs: Axes, frames: SweepFrames, colors: dict[str, object]) -> None:
    points = frames.metrics
    # reversed so the baseline (first in colors) is drawn last, on top of variants sharing its schedule
    for variant, color in reversed(list(colors.items())):
        mine = points[points["variant"] == variant]
        if mine.empty:
            continue
        # schedules are pure functions of progress, so one seed shows the variant's shape
        first = mine[mine["trial_id"] == mine["trial_id"].min()].sort_values("progress")
        if first["lr"].notna().any():
            ax_lr.plot(first["progress"], first["lr"], color=color, lw=1.2)
        if first["batch_size"].notna().any():
            ax_bs.step(first["progress"], first["batch_size"], where="post", color=color, lw=1.2)
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_bs.set_ylabel("batch size (seqs)")
    ax_bs.set_xlabel("progress p")
    for ax in (ax_lr, ax_bs):
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)


def loss_figure(frames: SweepFrames, x: str = "tokens") -> Figure:
    """Loss against tokens or seconds (left), LR and batch size against progress (small panels, right)."""
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}; valid: {', '.join(X_AXES)}")
    if frames.metrics["loss"].notna().sum() == 0:
        raise NothingToPlot(f"sweep {frames.name!r}: no logged loss points to plot")
    baseline = tables.baseline_variant(frames.trials)
    colors = variant_colors(tables.variant_order(frames.trials, baseline), baseline)
    fig = _new_figure(11, 5.5)
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1])
    ax = fig.add_subplot(grid[:, 0])
    visible = _draw_loss(ax, frames, x, colors)
    if visible:
        low, high = min(visible), max(visible)
        margin = 0.05 * max(high - low, 1e-3)
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel(X_AXES[x])
    ax.xaxis.set_major_formatter(EngFormatter(unit="" if x == "tokens" else "s"))
    ax.set_ylabel("train MLM loss (smoothed)")
    ax.set_title(f"{frames.name}: loss vs {x} (mean over seeds, band = min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    _draw_schedule(fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1]), frames, colors)
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
    # one aligned column of Δ% right of every bar, so no label sits on a bar or the baseline line
    label_x = float((values + errors).max()) * 1.03
    for pos, (_, row) in zip(positions, rows.iterrows(), strict=True):
        note = "baseline" if row["is_baseline"] else tables.fmt_pct(row["delta_throughput_pct"])
        ax.text(label_x, pos, note, va="center", fontsize="small")
    if summary.baseline is not None and (rows["is_baseline"]).any():
        ax.axvline(float(values[rows["is_baseline"].to_numpy()][0]), color="black", lw=0.8, ls=":")
    ax.set_yticks(positions, rows["variant"].tolist())
    ax.set_xlabel("tokens / second (mean over completed seeds)")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlim(0, values.max() * 1.25)
    ax.set_title(f"{summary.name}: throughput")
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
    ax.set_xlabel("Δ loss vs the sweep's baseline (negative = better), 95% CI (Welch)")
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


def plot_sweep(store: Store, sweep_name: str, *, x: str = "tokens", out_dir: Path | str | None = None,
               frames: SweepFrames | None = None) -> list[Path]:
    """Write loss_vs_{x} (with the LR / batch-size panel) and throughput, PNG + SVG; return the paths.

    ``x`` is tokens, seconds or both. Raises ``NothingToPlot`` when the sweep has no loss points at all.
    """
    axes = list(X_AXES) if x == "both" else [x]
    frames = frames if frames is not None else load_sweep(store, sweep_name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(sweep_name)
    written: list[Path] = []
    for axis in axes:
        written += save(loss_figure(frames, axis), out, f"loss_vs_{axis}")
    if (frames.trials["status"] == "completed").any():
        summary = tables.summarize(frames)
        if summary.rows["tokens_per_second_mean"].notna().any():
            written += save(throughput_figure(summary), out, "throughput")
    return written


def plot_summary(store: Store, *, out_dir: Path | str = Path("plots")) -> list[Path]:
    return save(summary_figure(tables.all_comparisons(store)), Path(out_dir), "summary")
