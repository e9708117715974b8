"""Held-out loss at fixed budget marks (`train(eval_marks=N)`): measured outside the clock, training unchanged."""

import pytest

from cram_core.config import apply_overrides
from cram_core.presets import get_preset
from cram_core.train import train

BASE = ["data.max_documents=400", "budget.tokens=40960", "impl.threads=1", "train.log_every=2",
        "train.eval_sequences=32", "train.batch_size=32", "train.micro_batch_size=32"]  # 20 steps


def _run(**kw):
    records = []
    cfg = apply_overrides(get_preset("tiny"), BASE)
    summary = train(cfg, callback=records.append, progress=False, **kw)
    return summary, records


def test_eval_marks_measure_held_out_loss_without_changing_training():
    off, off_records = _run()
    on, on_records = _run(eval_marks=4)
    # "off" is the baseline: no eval records, and "on" trains exactly the same steps and losses
    assert not any("eval_loss" in r for r in off_records)
    assert [r["loss"] for r in on_records] == [r["loss"] for r in off_records]
    assert on["eval_loss"] == off["eval_loss"] and on["tokens"] == off["tokens"]
    marks = [r for r in on_records if "eval_loss" in r]
    # one eval at the first log step past p = 1/4, 2/4, 3/4; the final eval closes the curve at p = 1
    assert [round(r["progress"] * 4 - 0.5) for r in marks] == [1, 2, 3]
    assert len(on["eval_curve"]) == 4 and on["eval_curve"][-1] == (on["tokens"], on["eval_loss"])
    assert [t for t, _ in on["eval_curve"]] == sorted(t for t, _ in on["eval_curve"])
    assert on["eval_curve"][0][1] > on["eval_curve"][-1][1]  # it learns
    # the pause keeps evaluation out of the budget's seconds (the clock only measures training)
    assert on["seconds"] == pytest.approx(off["seconds"], rel=0.5)


def test_eval_marks_use_the_same_sequences_and_masks_in_every_trial():
    a, _ = _run(eval_marks=2)
    b, _ = _run(eval_marks=2)
    assert a["eval_curve"] == b["eval_curve"]
