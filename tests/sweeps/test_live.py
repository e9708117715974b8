"""The live view: running trials with variant, seed, progress p and current loss; the shared number format."""

from __future__ import annotations

import io

from rich.console import Console

from sweeps.live import LiveProgress, format_count, format_loss


def _render(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_running_trials_show_variant_seed_progress_and_loss() -> None:
    # before: the live line said only "2 running"; which trials, and how far along, was not shown
    live = LiveProgress("lr_schedules", total=4, already_done=0, concurrency=2, console=Console(file=io.StringIO()),
                        estimate_trial_s=None)
    live.trial_started("a", variant="one-cycle", seed=1)
    live.trial_started("b", variant="cosine", seed=0)
    live.trial_metrics("a", [{"progress": 0.25, "loss": 7.5, "tokens": 1e4},
                             {"progress": 0.5, "loss": 6.1234, "tokens": 20_500.0}])
    text = _render(live.panel())
    row = next(line for line in text.splitlines() if line.startswith("one-cycle"))
    assert " 1 " in row and "50%" in row and "6.123" in row and "20.5k" in row
    cosine = next(line for line in text.splitlines() if line.startswith("cosine"))
    assert "0%" in cosine and "—" in cosine  # no record yet: no loss
    assert "2 running" in text
    live.trial_finished("a", status="completed", value=6.0, reason=None, variant="one-cycle", seed=1)
    assert "one-cycle" not in _render(live.running_table())


def test_the_live_view_and_the_tables_share_one_number_format() -> None:
    from analysis.tables import fmt_count

    for x in (11_400.0, 20_000.0, 999.0, 1.25e6, float("nan")):
        assert format_count(x) == fmt_count(x)
    assert format_count(20_000.0) == "20k" and format_loss(6.18456) == "6.185" and format_loss(None) == "—"


def test_the_runner_feeds_the_live_view(ray_local, tmp_path, monkeypatch) -> None:
    from sweeps import live
    from sweeps.definitions import Sweep, resolve
    from sweeps.runner import RunOptions, run_sweep

    seen: list[tuple[str, float]] = []
    original = live.LiveProgress.trial_metrics

    def spy(self, key, records):
        seen.extend((self.running[key].variant, r["progress"]) for r in records)
        return original(self, key, records)

    monkeypatch.setattr(live.LiveProgress, "trial_metrics", spy)
    sweep = Sweep(name="live", section="training", axis="x", seeds=1, variants={"cosine": {"train.schedule": "cosine"}})
    run_sweep(resolve(sweep, preset="tiny", budget="1s"),
              RunOptions(store_url=f"sqlite:///{tmp_path / 'r.db'}", backend="sweeps.testing"),
              console=Console(file=io.StringIO()))
    assert {v for v, _ in seen} == {"baseline", "cosine"} and max(p for _, p in seen) == 1.0
