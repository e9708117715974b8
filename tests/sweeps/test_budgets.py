"""Several budgets in one sweep (--budgets): every variant x seed at each budget, stored as one sweep, the
trials a single-budget run already finished reused, and `analysis scaling` reading the result."""

from __future__ import annotations

import json

import optuna
import pytest
from sqlalchemy import create_engine, text

from analysis.cli import main as analysis_main
from cram_core.config import ConfigError
from sweeps.adhoc import grid_sweep
from sweeps.cli import main
from sweeps.definitions import SWEEPS, resolve

FAKE = ["--backend", "sweeps.testing"]
GRID = ["--name", "sc", "--vary", "optim.lr=1e-3,3e-3", "--preset", "tiny"]


def _trials(url: str, sweep: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(text("select t.variant, t.seed, t.status, t.budget_kind, t.budget_amount, t.summary "
                                    "from cram_trials t join cram_sweeps s on t.sweep_id = s.id "
                                    "where s.name = :n"), {"n": sweep}).fetchall()
    finally:
        engine.dispose()


def test_every_variant_seed_and_budget_is_planned_once_smallest_budget_first():
    sweep = SWEEPS["norm_placement"]
    multi = resolve(sweep, preset="tiny", seeds=2, budgets=["60ktok", "30ktok", "120ktok"])
    single = resolve(sweep, preset="tiny", seeds=2, budget="30ktok")
    assert multi.num_trials == 5 * 2 * 3 == len(multi.trials())
    keys = {(t.variant, t.seed, t.config.budget.tokens) for t in multi.trials()}
    assert len(keys) == 30 and {k[2] for k in keys} == {30e3, 60e3, 120e3}
    assert len({(t.config_hash, t.seed) for t in multi.trials()}) == 30  # the store's key tells them apart
    # the smallest budget is the base: its trials are the single-budget run's, so they are reused
    assert multi.base.hash() == single.base.hash()
    assert {(t.config_hash, t.seed) for t in single.trials()} <= {(t.config_hash, t.seed) for t in multi.trials()}
    assert [b["amount"] for b in multi.definition()["budgets"]] == [30e3, 60e3, 120e3]
    for t in multi.trials():  # the budget is the only difference from the variant's own config
        assert t.config.model == next(v for v in multi.variants if v.name == t.variant).config.model


def test_travel_budgets_carry_their_conversion():
    resolved = resolve(SWEEPS["norm_placement"], preset="tiny", seeds=1, budgets=["1h@2080ti", "4h@2080ti"])
    budgets = resolved.definition()["budgets"]
    assert [b["kind"] for b in budgets] == ["flops", "flops"]
    assert budgets[1]["amount"] == pytest.approx(4 * 3600 * 53.8e12 * 0.35)
    assert budgets[1]["conversion"]["gpu"] == "RTX 2080 Ti" and "35% MFU" in budgets[1]["text"]


@pytest.mark.parametrize("budgets, budget, words", [
    (["60s"], None, "two or more distinct budgets"),
    (["60s", "1m"], None, "two or more distinct budgets"),
    (["60s", "20ktok"], None, "one kind"),
    (["60s", "120s"], "60s", "--budget or --budgets"),
    (["60s", "nonsense"], None, "bad budget 'nonsense'"),
])
def test_bad_budget_lists_are_one_line(budgets, budget, words):
    with pytest.raises(ConfigError) as e:
        resolve(SWEEPS["norm_placement"], preset="tiny", budgets=budgets, budget=budget)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_budgets_on_a_search_sweep_and_bad_lists_from_the_cli_write_nothing(tmp_path, capsys):
    store = tmp_path / "s.db"
    assert main(["run", "peak_lr", "--budgets", "60s,120s", "--store", str(store), *FAKE]) == 2
    assert "grid sweeps" in capsys.readouterr().err
    assert main(["run", *GRID, "--budgets", "20ktok", "--store", str(store), *FAKE]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not store.exists()


@pytest.mark.parametrize("budget", [{"kind": "tokens", "amount": 20e3}, {"kind": "seconds", "amount": 90.0},
                                    {"kind": "flops", "amount": 1.234567e17}, {"kind": "tokens", "amount": 12345.0}])
def test_a_stored_budget_reads_back_as_the_same_amount(budget):
    from sweeps.definitions import parse_budget, stored_budget_text

    assert parse_budget(stored_budget_text(budget)) == {f"budget.{budget['kind']}": budget["amount"]}


def test_dry_run_lists_every_budget(capsys):
    assert main(["run", *GRID, "--budgets", "20ktok,40ktok", "--seeds", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20ktok per trial" in out and "40ktok per trial" in out and "trials           12" in out


@pytest.mark.usefixtures("ray_local")
def test_end_to_end_two_token_budgets_one_sweep_reuse_and_scaling_table(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["run", *GRID, "--seeds", "2", "--budget", "20ktok", "--store", url, *FAKE]) == 0
    capsys.readouterr()
    assert main(["run", *GRID, "--seeds", "2", "--budgets", "20ktok,40ktok", "--store", url, *FAKE]) == 0
    out = capsys.readouterr().out
    assert "12 trials (6 already done, 6 to run) | preset tiny, budget 20ktok; 40ktok |" in out
    assert "adv. @ 20ktok" in out and "verdict" in out  # the scaling view, not a one-budget table
    assert "lr=1e-3 @ 40ktok (seed 1)  loss" in out  # the live lines name each trial's budget
    # the best mean is over the seeds at the largest budget (before: over seeds and budgets, 'mean of 4 seeds')
    best = next(line for line in out.splitlines() if line.startswith("best"))
    assert " at 40ktok " in best and "(mean of 2 seeds)" in best
    rows = _trials(url, "sc")
    assert sorted((r[0], r[1], r[4]) for r in rows) == sorted(
        (v, s, b) for v in ("baseline", "lr=1e-3", "lr=3e-3") for s in (0, 1) for b in (20e3, 40e3))
    assert {r[2] for r in rows} == {"completed"} and {r[3] for r in rows} == {"tokens"}
    for r in rows:  # each trial's budget is its own, with the text it was run under
        budget = (json.loads(r[5]) if isinstance(r[5], str) else r[5])["budget"]
        assert budget["amount"] == r[4] and budget["text"] in ("20ktok", "40ktok")
    study = optuna.load_study(study_name="sc", storage=url)
    assert study.user_attrs["budget"] == "20ktok; 40ktok"
    assert sorted(t.user_attrs.get("budget", "") for t in study.trials)[-6:] == ["40ktok"] * 6
    assert main(["run", "sc", "--store", url, *FAKE]) == 0  # the stored ad-hoc sweep resumes at its budgets
    assert "12 trials (12 already done, 0 to run)" in capsys.readouterr().out
    assert analysis_main(["scaling", "sc", "--store", url, "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| lr=1e-3 | 40ktok | 2 |" in out and "slope / decade" in out
    assert (tmp_path / "plots" / "scaling.png").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_travel_budget_records_its_conversion_in_each_trial(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 't.db'}"
    args = ["run", "--name", "tr", "--vary", "optim.lr=1e-3", "--preset", "tiny", "--seeds", "1"]
    assert main([*args, "--budgets", "0.5s@2080ti,1s@2080ti", "--store", url, *FAKE]) == 0
    rows = _trials(url, "tr")
    assert len(rows) == 4 and {r[3] for r in rows} == {"flops"}
    for r in rows:
        budget = (json.loads(r[5]) if isinstance(r[5], str) else r[5])["budget"]
        assert budget["conversion"]["gpu"] == "RTX 2080 Ti" and budget["conversion"]["flops"] == pytest.approx(r[4])
        assert budget["text"].startswith(("0.5s@2080ti = ", "1s@2080ti = "))


def test_a_scaling_sweep_reuses_the_middle_budget_of_a_sweep_that_also_fine_tuned(tmp_path):
    # before: a run without --downstream passed over every trial of a sweep run with it ("other downstream
    # settings"), so a scaling sweep retrained the finished `mlp` trials of its middle budget
    from sweeps.ledger import Ledger, ReuseRules
    from sweeps.trial import DownstreamSpec

    url = f"sqlite:///{tmp_path / 'r.db'}"
    spec = DownstreamSpec(tasks=("sva",), seeds=1, epochs=3, max_train=8000, max_dev=None, data_root="/eval")
    one = resolve(SWEEPS["mlp"], preset="tiny", seeds=2, budget="2e12flop")
    grid = resolve(grid_sweep("mlp_sc", ["model.mlp=plain"]), preset="tiny", seeds=2,
                   budgets=["1e12flop", "2e12flop", "4e12flop"])
    ledger = Ledger(url)
    try:
        source_id = ledger.upsert_sweep(one, {"backend": "sweeps.testing", "downstream": spec.to_dict()})
        rows, _ = ledger.plan(source_id, one.trials(), retry_failed=False)
        for i, (row_id, planned) in enumerate(rows):
            ledger.finish(row_id, {"status": "completed", "eval_loss": 3.0 + i, "budget": {
                "kind": "flops", "amount": 2e12}, "evals": [{"task": "sva", "metric": "mcc", "value": 0.5}]})
        sweep_id = ledger.upsert_sweep(grid, {"backend": "sweeps.testing"})
        todo, _ = ledger.plan(sweep_id, grid.trials(), retry_failed=False)
        assert len(todo) == 2 * 2 * 3
        hardware = lambda p: "fake"  # noqa: E731
        # with downstream asked (here: other settings) nothing is reused: the scores would not compare
        other = DownstreamSpec(**{**spec.to_dict(), "epochs": 5}).identity()
        left, reused, stale = ledger.reuse_finished(sweep_id, todo, ReuseRules(
            backend="sweeps.testing", downstream=other, hardware=hardware))
        assert reused == 0 and stale == {"other downstream settings": 4}
        left, reused, stale = ledger.reuse_finished(sweep_id, todo, ReuseRules(
            backend="sweeps.testing", downstream=None, hardware=hardware))
        # baseline and plain MLP x 2 seeds at 2e12flop: the `mlp` trials, found by (config hash, seed)
        assert reused == 4 and not stale and {p.budget.text for _, p in left} == {"1e12flop", "4e12flop"}
    finally:
        ledger.close()
    linked = [r for r in _trials(url, "mlp_sc") if r[2] == "completed"]
    assert sorted((r[0], r[1], r[4]) for r in linked) == [
        ("baseline", 0, 2e12), ("baseline", 1, 2e12), ("mlp=plain", 0, 2e12), ("mlp=plain", 1, 2e12)]
