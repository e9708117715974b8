"""Held-out loss at fixed budget marks (`train(eval_marks=N)`): measured outside the clock, training unchanged."""

import numpy as np
import pytest

from cram_core import train as train_module
from cram_core.config import ConfigError, apply_overrides
from cram_core.presets import get_preset
from cram_core.train import evaluate, mark_indices, train

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


def _run_spying(monkeypatch, *overrides, eval_marks=4):
    """A run with `evaluate` spied on: (summary, [(indices, loss) per call, the final eval last])."""
    calls = []

    def spy(parts, tokens, indices, state):
        loss = evaluate(parts, tokens, indices, state)
        calls.append((indices.copy(), loss))
        return loss

    monkeypatch.setattr(train_module, "evaluate", spy)
    cfg = apply_overrides(get_preset("tiny"), [*BASE, *overrides])
    return train(cfg, progress=False, eval_marks=eval_marks), calls


def test_mark_sequences_choose_the_marks_sequences_and_leave_the_final_eval_alone(monkeypatch):
    full, full_calls = _run_spying(monkeypatch, "train.mark_sequences=32")
    part, part_calls = _run_spying(monkeypatch, "train.mark_sequences=8")
    eval_idx = full_calls[-1][0]
    assert len(eval_idx) == 32 and np.array_equal(part_calls[-1][0], eval_idx)  # the final eval reads all 32
    marks = [idx for idx, _ in part_calls[:-1]]
    assert len(marks) == 3 and all(np.array_equal(m, marks[0]) for m in marks)  # the same 8 at every mark
    assert len(marks[0]) == 8 and set(marks[0]) < set(eval_idx)
    assert np.array_equal(marks[0], eval_idx[[0, 4, 8, 13, 17, 22, 26, 31]])  # evenly spaced over all 32
    assert [loss for _, loss in part_calls[:-1]] != [loss for _, loss in full_calls[:-1]]
    # training and the table's number are untouched; the summary says what the marks read and what they cost
    assert part["eval_loss"] == full["eval_loss"] and part["final_loss"] == full["final_loss"]
    assert part["data"]["mark_sequences"] == 8 and full["data"]["mark_sequences"] == 32
    assert part["timings"]["marks_s"] > 0
    assert [loss for _, loss in part["eval_curve"]] == [loss for _, loss in part_calls]  # marks, then the final


def test_mark_sequences_at_eval_sequences_reproduce_the_marks_on_every_held_out_sequence(monkeypatch):
    # what every mark read before train.mark_sequences existed: the final eval's sequences, in order
    summary, calls = _run_spying(monkeypatch, "train.mark_sequences=32")
    assert len(calls) == 4 and all(np.array_equal(idx, calls[-1][0]) for idx, _ in calls)
    above, _ = _run_spying(monkeypatch, "train.mark_sequences=1000")  # more than there are: all of them
    assert above["eval_curve"] == summary["eval_curve"]


def test_default_marks_read_128_held_out_sequences_without_marks_none(monkeypatch):
    assert get_preset("tiny").train.mark_sequences == 128 and get_preset("tiny").train.eval_sequences == 512
    summary, calls = _run_spying(monkeypatch, "train.eval_sequences=200")
    assert [len(idx) for idx, _ in calls] == [128, 128, 128, 200]
    off, _ = _run_spying(monkeypatch, eval_marks=0)
    assert off["timings"]["marks_s"] == 0 and off["data"]["mark_sequences"] == 0


def test_mark_indices_are_an_evenly_spaced_subset():
    eval_idx = np.arange(5, 1005, 2)  # 500 held-out sequence ids
    for n in (1, 7, 128, 499):
        sub = mark_indices(eval_idx, n)
        assert len(sub) == n and len(np.unique(sub)) == n and set(sub) <= set(eval_idx)
        assert sub[0] == eval_idx[0] and (n == 1 or sub[-1] == eval_idx[-1])
    assert mark_indices(eval_idx, 500) is eval_idx and mark_indices(eval_idx, 501) is eval_idx


def test_mark_sequences_is_validated_and_stays_out_of_the_trial_key():
    with pytest.raises(ConfigError, match=r"^train\.mark_sequences must be >= 1, got 0$"):
        apply_overrides(get_preset("tiny"), ["train.mark_sequences=0"])
    base = get_preset("tiny")
    other = apply_overrides(base, ["train.mark_sequences=16"])
    assert other.to_dict()["train"]["mark_sequences"] == 16  # recorded with the trial's config
    assert other.hash() == base.hash()  # a store from before the field resumes with the same keys
    assert apply_overrides(base, ["train.eval_sequences=64"]).hash() != base.hash()
