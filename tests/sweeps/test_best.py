""""Best" in `status`, the live line and the end of a run is the best mean over seeds with its CI, not one lucky seed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from analysis.stats import mean_ci
from sweeps.definitions import SWEEPS, resolve
from sweeps.ledger import Ledger
from sweeps.live import LiveProgress

LOSSES = {"baseline": [2.0, 3.0, 3.1], "dropout 0.1": [2.40, 2.41, 2.39]}  # the baseline has the luckiest seed


def test_ledger_progress_best_is_the_best_mean(tmp_path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'results.db'}")
    resolved = resolve(SWEEPS["dropout"], preset="tiny", seeds=3, budget="1s")
    sweep_id = ledger.upsert_sweep(resolved, {"backend": "sweeps.testing"})
    todo, _ = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    for row_id, planned in todo:
        if planned.variant not in LOSSES:
            continue
        loss = LOSSES[planned.variant][planned.seed]
        ledger.start(row_id, optuna_number=None, git=("abc", False), budget=("seconds", 1.0))
        ledger.finish(row_id, {"status": "completed", "eval_loss": loss, "final_loss": loss, "tokens": 1.0,
                               "hardware": "fake", "versions": {}, "timings": {"train_s": 1.0}})
    best = ledger.progress("dropout").best
    ledger.close()
    assert best.variant == "dropout 0.1" and best.num_seeds == 3
    assert (best.mean, best.ci_half_width) == pytest.approx(mean_ci(LOSSES["dropout 0.1"]))
    assert "dropout 0.1 2.4000 ± 0.025 (mean of 3 seeds)" == best.describe()


def test_live_status_line_shows_the_best_mean() -> None:
    console = Console(file=io.StringIO(), width=300)
    live = LiveProgress("dropout", total=6, already_done=0, concurrency=1, console=console, estimate_trial_s=None)
    for variant, losses in LOSSES.items():
        for seed, loss in enumerate(losses):
            live.trial_finished(f"{variant}/{seed}", status="completed", value=loss, reason=None, variant=variant,
                                seed=seed)
    line = live.status_line().plain
    assert "best dropout 0.1 2.4000 ± 0.025 (mean of 3 seeds)" in line and "seed 0" not in line
