"""The budget counts what the model computes: each case checked against the forward passes actually run.

The oracle is a forward hook on the model, live only inside `optimizer_step` (warm-up and evaluation are
outside the budget): every call adds rows x input length tokens and rows x FLOPs of that input length.
"""

import pytest

import cram_core.train as train_module
from cram_core.config import apply_overrides
from cram_core.model import training_flops_per_sequence
from cram_core.presets import get_preset

BASE = ["data.max_documents=400", "impl.threads=1", "train.log_every=100", "train.eval_sequences=32",
        "train.batch_size=32", "train.micro_batch_size=32"]  # BATCH below
TINY = get_preset("tiny").model
VOCAB = 2048  # the tiny preset's vocabulary on the 400-document slice
BATCH = 32


def f(seq_len, num_predictions):
    return training_flops_per_sequence(TINY, VOCAB, seq_len, num_predictions)


def run_counting(monkeypatch, tmp_path, *overrides):
    seen = {"passes": 0, "tokens": 0, "flops": 0.0}
    inside = {"step": False}
    real_build, real_step = train_module.build_parts, train_module.optimizer_step

    def build_parts(cfg, vocab_size, *rest):
        parts = real_build(cfg, vocab_size, *rest)

        def hook(module, args):
            if inside["step"]:
                (rows, length), num_pred = args[0].shape, args[1].shape[1]
                seen["passes"] += 1
                seen["tokens"] += rows * length
                seen["flops"] += rows * training_flops_per_sequence(cfg.model, vocab_size, length, num_pred)

        parts.model.register_forward_pre_hook(hook)
        return parts

    def optimizer_step(*args, **kwargs):
        inside["step"] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            inside["step"] = False

    monkeypatch.setattr(train_module, "build_parts", build_parts)
    monkeypatch.setattr(train_module, "optimizer_step", optimizer_step)
    cfg = apply_overrides(get_preset("tiny"), BASE + list(overrides))
    summary = train_module.train(cfg, out_dir=None, progress=False)
    assert summary["status"] == "completed", summary["reason"]
    return summary, seen


# (overrides, optimizer steps, forward passes, tokens, FLOPs) with the budget stopping within one step
CASES = {
    "baseline: full sequences": (["budget.tokens=20000"], 10, 10, 10 * BATCH * 64, 10 * BATCH * f(64, 16)),
    # issue case: token_drop=0.5 keeps the 16 predicted + 24 of the other 48 = 40 of 64 positions
    "token dropping: kept positions only": (["budget.tokens=20000", "objective.token_drop=0.5"],
                                            16, 16, 16 * BATCH * 40, 16 * BATCH * f(40, 16)),
    # issue case: budget.flops=1e11 with SAM ran 40 passes and counted 20; now 10 steps = 20 passes, all counted
    "SAM: both passes": (["budget.flops=1e11", "optim.wrapper=sam"], 10, 20, 20 * BATCH * 64, 20 * BATCH * f(64, 16)),
    # issue case: length 48 of 64 uses one 48-token row per sequence and throws the 16-token tail away
    "curriculum 48 of 64: used rows only": (["budget.tokens=20000", "train.seq_len_curriculum=48:1.0"],
                                            14, 14, 14 * BATCH * 48, 14 * BATCH * f(48, 12)),
    "curriculum 16 of 64: every row": (["budget.tokens=8192", "train.seq_len_curriculum=16:1.0"],
                                       4, 4, 4 * BATCH * 64, 4 * 4 * BATCH * f(16, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_budget_counts_what_the_model_computes(monkeypatch, tmp_path, case):
    overrides, steps, passes, tokens, flops = CASES[case]
    summary, seen = run_counting(monkeypatch, tmp_path, *overrides)
    assert (summary["steps"], seen["passes"], summary["tokens"]) == (steps, passes, tokens)
    assert summary["flops"] == pytest.approx(flops, rel=1e-12)
    assert (summary["tokens"], summary["flops"]) == (seen["tokens"], pytest.approx(seen["flops"], rel=1e-12))
