"""Every sweep's CPU default measures the model, not the machine: tokens, or FLOPs where the cost per token varies."""

from __future__ import annotations

import pytest

from sweeps.definitions import WORK_BUDGET_TOKENS, GPU_PRESET, SWEEPS, flops_per_token, resolve


def _cost(cfg) -> tuple:
    # what the budget clock's FLOP count sees, plus what changes the work per token without it
    return (flops_per_token(cfg), cfg.train.seq_len_curriculum, cfg.objective.token_drop)


@pytest.mark.parametrize("preset", list(WORK_BUDGET_TOKENS))
@pytest.mark.parametrize("name", list(SWEEPS))
def test_cpu_default_is_tokens_unless_variants_change_the_cost_per_token(name: str, preset: str) -> None:
    sweep = SWEEPS[name]
    resolved = resolve(sweep, preset=preset)
    base = resolved.base
    assert base.budget.kind == sweep.cpu_budget_kind != "seconds"
    varies = any(_cost(v.config) != _cost(base) for v in resolved.runnable_variants())
    if varies:
        assert sweep.cpu_budget_kind == "flops", f"{name}: variants change the cost per token"
    if base.budget.kind == "tokens":
        assert base.budget.amount == WORK_BUDGET_TOKENS[preset]
    else:  # the baseline spends its FLOPs on exactly the CPU token budget
        tokens = base.budget.amount / flops_per_token(base)
        assert tokens == pytest.approx(WORK_BUDGET_TOKENS[preset], rel=5e-3)  # FLOPs kept to 3 significant digits
    assert f"default for {preset}" in resolved.budget_text


def test_seconds_stay_the_gpu_default_and_available_everywhere() -> None:
    gpu = resolve(SWEEPS["lr_schedules"], preset=GPU_PRESET)
    assert gpu.base.budget.kind == "seconds"
    cpu_seconds = resolve(SWEEPS["model_shape"], preset="tiny", budget="20s")
    assert (cpu_seconds.base.budget.kind, cpu_seconds.base.budget.amount) == ("seconds", 20.0)
    explicit = resolve(SWEEPS["lr_schedules"], preset="tiny", overrides=["budget.tokens=5e4"])
    assert (explicit.base.budget.kind, explicit.base.budget.amount) == ("tokens", 5e4)
