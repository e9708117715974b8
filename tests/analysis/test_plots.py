"""Figures: seeds aligned over the whole budget, schedules from the schedule functions, held-out end points,
no clipped labels, small multiples for many variants."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.image import imread

from analysis import plots, tables
from analysis.load import load_sweep
from cram_core.config import apply_overrides
from cram_core.presets import get_preset
from cram_core.schedules import lr_factor
from sweeps.store import MetricRow, SweepRow, TrialRow, make_engine, session_factory

POINTS = 40


def _store(url: str, name: str, variants: dict[str, dict], *, totals: dict[int, float] | None = None,
           tps: dict[str, float] | None = None, tps_spread: float = 0.0) -> None:
    """Real tiny-preset configs; seed s ends at totals[s] tokens (a seconds budget: throughput differs)."""
    totals = totals or {0: 100_000.0, 1: 100_000.0}
    engine = make_engine(url, create=True)
    with session_factory(engine)() as session, session.begin():
        sweep = SweepRow(name=name, definition={})
        for k, (variant, overrides) in enumerate({"baseline": {}, **variants}.items()):
            cfg = apply_overrides(get_preset("tiny"), [f"{key}={value}" for key, value in overrides.items()])
            for seed, total in totals.items():
                loss = 4.0 + 0.1 * k + 0.01 * seed
                speed = (tps or {}).get(variant, 1000.0) * (1 + tps_spread * seed)
                trial = TrialRow(sweep=sweep, variant=variant, seed=seed, is_baseline=variant == "baseline",
                                 config=cfg.to_dict(), config_hash=f"{variant}", status="completed",
                                 final_loss=loss, eval_loss=loss + 0.05, tokens=total, seconds=60.0,
                                 tokens_per_second=speed, params=1000)
                trial.metrics = [MetricRow(step=i, progress=i / POINTS, tokens=total * i / POINTS,
                                           seconds=60.0 * i / POINTS, loss=loss + 3 * math.exp(-4 * i / POINTS),
                                           lr=1e-3, batch_size=cfg.train.batch_size, seq_len=64)
                                 for i in range(1, POINTS + 1)]
                session.add(trial)
    engine.dispose()


def _loss_axes(fig):
    return [ax for ax in fig.axes if ax.get_xlabel() in plots.X_AXES.values()]


def _panel(fig, label):
    return [ax for ax in fig.axes if ax.get_ylabel() == label]


def test_seed_curves_span_the_whole_budget(tmp_path):
    """Seeds that saw 82k and 168k tokens: the mean curve ends at their mean (125k), not at the shorter one."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _store(url, "s", {"cosine": {"train.schedule": "cosine"}}, totals={0: 82_000.0, 1: 168_000.0})
    fig = plots.loss_figure(load_sweep(url, "s"), "tokens")
    (ax,) = _loss_axes(fig)
    line = next(line for line in ax.get_lines() if line.get_label() == "baseline (n=2)")
    assert line.get_xdata().max() == pytest.approx(125_000, rel=1e-6)
    assert line.get_xdata().min() == pytest.approx(125_000 / POINTS, rel=1e-6)


def test_lr_panel_comes_from_the_schedule_and_an_identical_batch_panel_is_left_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _store(url, "s", {"warm": {"train.schedule": "one-cycle", "train.warmup": 0.1}})
    frames = load_sweep(url, "s")
    fig = plots.loss_figure(frames, "tokens")
    (lr_ax,) = _panel(fig, "learning rate")
    assert not _panel(fig, "batch size (seqs)")  # every variant has the tiny preset's batch ramp
    warm = apply_overrides(get_preset("tiny"), ["train.schedule=one-cycle", "train.warmup=0.1"])
    p = np.linspace(0, 1, plots.SCHEDULE_POINTS)
    expected = warm.optim.lr * np.array([lr_factor(warm.train, q) for q in p])
    drawn = [line.get_ydata() for line in lr_ax.get_lines()]
    # the warm-up from 0 is drawn though no metric point was logged at p < 1/40
    assert any(len(y) == len(p) and np.allclose(y, expected) for y in drawn) and expected[0] == 0.0


def test_no_schedule_panel_when_every_variant_shares_the_schedule(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _store(url, "s", {"post": {"model.norm_scheme": "post"}})
    fig = plots.loss_figure(load_sweep(url, "s"), "seconds")
    assert len(fig.axes) == 1 and _loss_axes(fig)


def test_held_out_end_points_with_their_ci(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _store(url, "s", {"post": {"model.norm_scheme": "post"}})
    frames = load_sweep(url, "s")
    (ax,) = _loss_axes(plots.loss_figure(frames, "tokens"))
    markers = [line for line in ax.get_lines() if line.get_marker() == plots.HELD_OUT_MARKER]
    base = frames.trials[frames.trials["variant"] == "baseline"]["eval_loss"].to_numpy()
    assert any(np.isclose(m.get_ydata()[0], base.mean()) and np.isclose(m.get_xdata()[0], 100_000) for m in markers)
    assert "held-out loss at the end (mean, 95% CI)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "train" in ax.get_ylabel() and "held-out" in ax.get_ylabel()


def _border_is_blank(png: bytes) -> bool:
    image = imread(io.BytesIO(png))[..., :3]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return bool(np.all(border > 0.98))


def test_throughput_labels_are_never_clipped(tmp_path):
    """Long names and a wide error bar: every label stays inside the saved image."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    names = {"a much longer variant name than usual, to push the labels": {"model.norm_scheme": "post"},
             "fast": {"train.schedule": "cosine"}}
    _store(url, "s", names, tps={"fast": 5000.0}, tps_spread=1.5)
    fig = plots.throughput_figure(tables.summarize(load_sweep(url, "s")))
    paths = plots.save(fig, tmp_path / "out", "throughput")
    assert _border_is_blank(paths[0].read_bytes())


def test_many_variants_become_small_multiples(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    schedules = ["cosine", "linear", "constant", "one-cycle", "ramp", "dive", "polynomial"]
    _store(url, "s", {s: {"train.schedule": s} for s in schedules})
    fig = plots.loss_figure(load_sweep(url, "s"), "seconds")
    panels = [ax for ax in fig.axes if ax.get_title() in schedules]
    assert [ax.get_title() for ax in panels] == schedules
    for ax in panels:  # each panel: the baseline and one variant
        labels = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert labels == {"baseline (n=2)", f"{ax.get_title()} (n=2)"}
    assert _panel(fig, "learning rate")
    assert _border_is_blank(plots.save(fig, tmp_path / "out", "loss")[0].read_bytes())


def test_small_multiples_share_an_x_range_that_holds_every_panel(tmp_path):
    # before: the panels took the first panel's x range, so a variant that read 10x the tokens in its seconds
    # budget was cut off at a tenth of its curve (the H200 preset search: 4x512's fall to 3.5 was off the axis)
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'r.db'}"
    schedules = ["cosine", "linear", "constant", "one-cycle", "ramp", "dive", "polynomial"]
    _store(url, "s", {s: {"train.schedule": s} for s in schedules})
    engine = make_engine(url)
    with engine.begin() as conn:
        fast = "(select id from cram_trials where variant = 'polynomial')"
        conn.execute(text(f"update cram_metrics set tokens = tokens * 10 where trial_id in {fast}"))
        conn.execute(text("update cram_trials set tokens = tokens * 10 where variant = 'polynomial'"))
    engine.dispose()
    fig = plots.loss_figure(load_sweep(url, "s"), "tokens")
    panels = [ax for ax in fig.axes if ax.get_title() in schedules]
    assert len(panels) == len(schedules)
    assert all(ax.get_xlim()[1] >= 1e6 for ax in panels), [ax.get_xlim() for ax in panels]
