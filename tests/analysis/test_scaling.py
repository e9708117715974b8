"""The scaling view (analysis.scaling) on synthetic stores with known power laws and known advantages."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from analysis.cli import main as analysis_main
from analysis.load import load_sweep
from analysis.scaling import FORM_OFFSET, FORM_POWER, ScalingError, fit_curve, scaling_view
from sweeps.store import SweepRow, TrialRow, make_engine, session_factory

C0 = 1e15
SEED_NOISE = (0.004, -0.003, -0.001)
"per-seed loss offsets, the same at every budget (as shared data order and init would give)"


def _row(sweep: SweepRow, variant: str, seed: int, budget: float, loss: float) -> TrialRow:
    h = hashlib.md5(f"{variant}{budget}".encode()).hexdigest()
    return TrialRow(sweep=sweep, variant=variant, seed=seed, is_baseline=variant == "baseline", config={},
                    config_hash=h, status="completed", eval_loss=loss, final_loss=loss + 0.1, tokens=budget / 1e6,
                    flops=budget, seconds=budget / 1e13, budget_kind="flops", budget_amount=budget)


def _store(tmp_path, curves: dict, budgets: list[float], name: str = "scal", seeds: int = 3) -> str:
    """curves: variant -> f(budget, seed) giving the held-out loss."""
    url = f"sqlite:///{tmp_path / 'scal.db'}"
    engine = make_engine(url, create=True)
    with session_factory(engine)() as session, session.begin():
        sweep = SweepRow(name=name, definition={"budgets": [{"kind": "flops", "amount": b, "text": f"{b:.3g}flop"}
                                                            for b in budgets]})
        for variant, f in curves.items():
            for seed in range(seeds):
                for b in budgets:
                    session.add(_row(sweep, variant, seed, b, f(b, seed)))
    engine.dispose()
    return url


def test_a_two_parameter_power_law_is_recovered_from_three_budgets(tmp_path):
    budgets = [C0, 4 * C0, 16 * C0]
    url = _store(tmp_path, {"baseline": lambda b, s: 4.0 * (b / C0) ** -0.12 * (1 + SEED_NOISE[s])}, budgets)
    fit = scaling_view(load_sweep(url, "scal")).fits["baseline"]
    assert fit.form == FORM_POWER and fit.num_seeds == 3
    assert fit.b == pytest.approx(0.12, abs=1e-6) and fit.b_ci < 1e-6  # the noise only scales a
    assert fit.params[0] == pytest.approx(4.0, rel=0.01)


def test_the_offset_form_recovers_b_and_c_from_five_budgets():
    x = np.array([1, 2, 4, 8, 16, 32.0])
    form, (a, b, c) = fit_curve(x * C0, 1.6 + 3.0 * x ** -0.35, len(x), C0)
    assert form == FORM_OFFSET
    assert (a, b, c) == (pytest.approx(3.0, rel=0.01), pytest.approx(0.35, abs=0.01), pytest.approx(1.6, abs=0.01))


def test_offset_fit_with_ci_over_seeds(tmp_path):
    budgets = [C0 * 2 ** k for k in range(5)]
    url = _store(tmp_path, {"baseline": lambda b, s: 2.0 + SEED_NOISE[s] + 3.0 * (b / C0) ** -(0.4 + SEED_NOISE[s])},
                 budgets)
    fit = scaling_view(load_sweep(url, "scal")).fits["baseline"]
    assert fit.form == FORM_OFFSET and fit.num_seeds == 3
    assert fit.b == pytest.approx(0.4, abs=0.01) and 0 < fit.b_ci < 0.05
    assert fit.c == pytest.approx(2.0, abs=0.01) and 0 < fit.c_ci < 0.05


# advantage = baseline loss - variant loss, d = decades above the smallest budget
BUDGETS = [C0, 10 * C0, 100 * C0]
PER_SEED_SLOPE = {"grows": (0.050, 0.046, 0.054), "shrinks": (-0.050, -0.046, -0.054), "holds": (0.01, -0.012, 0.003)}
START = {"grows": 0.02, "shrinks": 0.2, "holds": 0.05}


def _advantage_store(tmp_path) -> str:
    base = lambda b, s: 5.0 * (b / C0) ** -0.1 + SEED_NOISE[s]  # noqa: E731

    def variant(kind):
        return lambda b, s: base(b, s) - (START[kind] + PER_SEED_SLOPE[kind][s] * math.log10(b / C0))

    return _store(tmp_path, {"baseline": base, **{k: variant(k) for k in START}}, BUDGETS)


def test_grow_hold_shrink_verdicts_and_the_crossing_budget(tmp_path):
    view = scaling_view(load_sweep(_advantage_store(tmp_path), "scal"))
    t = view.trends
    assert {k: t[k].verdict for k in START} == {"grows": "grows", "shrinks": "shrinks", "holds": "holds"}
    assert t["grows"].slope == pytest.approx(0.05, abs=1e-9)
    assert t["shrinks"].advantage[C0][0] == pytest.approx(0.2)
    # 0.2 - 0.05 d = 0 at d = 4: four decades above the smallest budget, beyond the data
    assert t["shrinks"].crossing == pytest.approx(1e4 * C0, rel=1e-6) and t["shrinks"].crossing_note == "extrapolated"
    assert math.isnan(t["grows"].crossing) and math.isnan(t["holds"].crossing)


def test_a_variant_behind_that_catches_up_crosses_within_or_beyond_the_data(tmp_path):
    base = lambda b, s: 5.0 + SEED_NOISE[s]  # noqa: E731

    def behind(by):  # behind the baseline by `by` at the smallest budget, catching up 0.04 per decade
        return lambda b, s: base(b, s) + by - (0.04 + 0.001 * s) * math.log10(b / C0)

    url = _store(tmp_path, {"baseline": base, "far behind": behind(0.1), "a little behind": behind(0.05)}, BUDGETS)
    t = scaling_view(load_sweep(url, "scal")).trends
    # mean slope 0.041 per decade: zero at d = 0.1 / 0.041 (beyond the 2 measured decades), 0.05 / 0.041 (within)
    assert t["far behind"].verdict == "grows" and t["far behind"].crossing_note == "extrapolated"
    assert t["far behind"].crossing == pytest.approx(10 ** (0.1 / 0.041) * C0, rel=1e-6)
    assert t["a little behind"].crossing == pytest.approx(10 ** (0.05 / 0.041) * C0, rel=1e-6)
    assert t["a little behind"].crossing_note == "within the measured range"


def test_cli_prints_the_tables_and_writes_the_log_log_plot(tmp_path, capsys):
    url = _advantage_store(tmp_path)
    assert analysis_main(["scaling", "scal", "--store", url, "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| shrinks |" in out and "| grows |" in out and "| holds |" in out
    assert "1e+19flop (extrapolated)" in out and FORM_POWER in out
    assert (tmp_path / "plots" / "scaling.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "scaling.svg").exists()
    assert (tmp_path / "plots" / "scaling_seconds.png").stat().st_size > 10_000  # loss against training seconds


def test_one_budget_is_a_one_line_error_saying_how_to_get_several(tmp_path, capsys):
    url = _store(tmp_path, {"baseline": lambda b, s: 3.0}, [C0], name="flat")
    assert analysis_main(["scaling", "flat", "--store", url, "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--budgets" in err and not (tmp_path / "plots").exists()
    with pytest.raises(ScalingError):
        scaling_view(load_sweep(url, "flat"))


def test_a_one_budget_table_of_a_several_budget_sweep_needs_its_budget(tmp_path, capsys):
    # before: `analysis table` averaged each seed over the budgets, as if they were one run
    url = _advantage_store(tmp_path)
    assert analysis_main(["table", "scal", "--store", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "3 budgets (1e+15flop, 1e+16flop, 1e+17flop)" in err and "analysis scaling" in err
    assert analysis_main(["table", "scal", "--store", url, "--budget", "1e17flop", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "3.155" in out or "3.15" in out  # the baseline's loss at 1e17 only (5 x 100^-0.1 = 3.155)
    assert "5.00" not in out
    for bad in ("1e18flop", "lots"):
        assert analysis_main(["table", "scal", "--store", url, "--budget", bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_analysis_results_writes_the_scaling_page_of_a_several_budget_sweep(tmp_path, capsys):
    url = _advantage_store(tmp_path)
    out = tmp_path / "docs"
    assert analysis_main(["results", "scal", "--store", url, "--out", str(out), "--note", "Read it so."]) == 0
    names = ["scal.md", "scal-scaling.png", "scal-scaling-seconds.png"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    page = (out / "scal.md").read_text()
    assert page.startswith("# Scaling sweep `scal`")
    assert "- **budget**: 1e+15flop; 1e+16flop; 1e+17flop (3 budgets, flops)" in page
    assert "- **trials**: 36 completed, 0 diverged, 0 failed (of 36)" in page
    # the three tables `analysis scaling` prints, between Results and the figures
    assert analysis_main(["scaling", "scal", "--store", url, "--out", str(tmp_path / "plots")]) == 0
    tables = capsys.readouterr().out.split("\n" + str(tmp_path / "plots"))[0].strip()
    assert f"## Results\n\n{tables}\n\n## Loss against compute" in page and "| shrinks |" in page
    assert "](scal-scaling.png)" in page and "](scal-scaling-seconds.png)" in page
    assert page.endswith("## Notes\n\nRead it so.\n")
    again = tmp_path / "again"
    assert analysis_main(["results", "scal", "--store", url, "--out", str(again), "--note", "Read it so."]) == 0
    assert (again / "scal.md").read_text() == page  # the same bytes from the same store
    # one budget's page: the usual table, at that budget only
    one = tmp_path / "one"
    assert analysis_main(["results", "scal", "--store", url, "--out", str(one), "--budget", "1e16flop"]) == 0
    assert "# Sweep `scal`" in (one / "scal.md").read_text()


def test_a_sweep_without_recorded_flops_plots_against_seconds_only(tmp_path, capsys):
    url = _advantage_store(tmp_path)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(TrialRow.__table__.update().values(flops=None))
    engine.dispose()
    out = tmp_path / "docs"
    assert analysis_main(["results", "scal", "--store", url, "--out", str(out)]) == 0
    page = (out / "scal.md").read_text()
    assert "recorded its training FLOPs: no log-log plot against them" in page and "](scal-scaling-seconds.png)" in page
    assert not (out / "scal-scaling.png").exists() and "| no fit |" in page
    capsys.readouterr()
    assert analysis_main(["scaling", "scal", "--store", url, "--out", str(tmp_path / "plots")]) == 0
    assert "no log-log plot against them" in capsys.readouterr().out and not (tmp_path / "plots").exists()


def test_seconds_that_the_machine_set_are_flagged_and_ticks_stay_short(tmp_path):
    from analysis.scaling import _tick, loss_table, scaling_figure

    url = _advantage_store(tmp_path)
    view = scaling_view(load_sweep(url, "scal"))
    assert "tokens/s of one variant varied by ≤ 0.0% between its trials" in loss_table(view).caption
    engine = make_engine(url)
    with engine.begin() as conn:  # one trial of the baseline 20% slower: its neighbours took the machine
        first = conn.execute(TrialRow.__table__.select().where(TrialRow.variant == "baseline")).first()
        conn.execute(TrialRow.__table__.update().where(TrialRow.id == first.id).values(seconds=first.seconds * 1.2))
    engine.dispose()
    view = scaling_view(load_sweep(url, "scal"))
    assert "Unreliable seconds: tokens/s of one variant varied by up to 20.0% between its trials (> 10%)" in \
        loss_table(view).caption
    assert [_tick(x) for x in (5.475e15, 7.3e15, 1.46e16, 2.6e11, 90.0)] == ["5.5e15", "7.3e15", "1.5e16", "2.6e11",
                                                                            "90"]
    ax = scaling_figure(view).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e15", "1e16", "1e17"]


def test_the_panel_title_names_a_lead_or_a_gap_and_which_way_it_goes() -> None:
    from analysis.scaling import Trend, _trend_note

    def trend(last: float, verdict: str) -> Trend:
        return Trend(advantage={1e15: (0.0, 0.1), 4e15: (last, 0.1)}, slope=0.0, slope_ci=0.0, verdict=verdict,
                     crossing=float("nan"), crossing_note="")

    assert _trend_note(trend(+0.05, "grows")) == " (ahead, lead grows)"
    assert _trend_note(trend(+0.05, "holds")) == " (ahead, lead holds)"
    assert _trend_note(trend(-0.05, "grows")) == " (behind, gap shrinks)"  # the advantage rises towards 0
    assert _trend_note(trend(-0.05, "shrinks")) == " (behind, gap grows)"
    assert _trend_note(trend(-0.05, "n=1, no CI")) == ""
    assert _trend_note(None) == ""
