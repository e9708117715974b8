"""Every registered sweep resolves on the CPU preset: its overrides are real flags, its models build."""

from __future__ import annotations

import dataclasses

import pytest

from cram_core.config import ConfigError, RunConfig
from cram_core.presets import PRESETS, bert_base
from sweeps.definitions import (
    BASELINE,
    WORK_BUDGET_TOKENS,
    SWEEPS,
    Sweep,
    check_registry,
    get_sweep,
    parse_budget,
    resolve,
)

REQUIRED = {
    "lr_schedules", "peak_lr", "optimizers", "batch_size", "masking", "dropout", "gradient_clipping",
    "norm_placement", "norm_type", "attention_bias", "linear_bias", "mlp", "position_embeddings", "embeddings",
    "head", "model_shape", "attention_type", "curriculum", "weight_averaging", "tokenizer", "data_filtering",
    "data_ordering", "group_ablation",
}


def test_registry_covers_the_catalogue() -> None:
    assert REQUIRED <= set(SWEEPS)
    check_registry()


@pytest.mark.parametrize("name", list(SWEEPS))
def test_sweep_resolves_and_builds(name: str) -> None:
    resolved = resolve(SWEEPS[name], preset="tiny")
    assert resolved.variants[0].name == BASELINE and resolved.variants[0].overrides == {}
    names = [v.name for v in resolved.variants]
    assert len(names) == len(set(names))
    assert resolved.num_trials >= 2
    model_variants = [v for v in resolved.runnable_variants() if any(k.startswith("model.") for k in v.overrides)]
    if model_variants:
        model = pytest.importorskip("cram_core.model")
        for v in model_variants:
            built = model.build_model(v.config.model, v.config.data.vocab_size)
            assert built.num_params() > 0, v.name
    for t in resolved.trials():
        assert t.config.train.seed == t.seed
        assert dataclasses.replace(t.config, train=dataclasses.replace(t.config.train, seed=0)).hash() == t.config_hash


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_sweep_resolves_on_every_preset(preset: str) -> None:
    for sweep in SWEEPS.values():
        resolved = resolve(sweep, preset=preset)
        assert resolved.runnable_variants()[0].name == BASELINE


def test_variant_equal_to_baseline_is_not_run_twice() -> None:
    # bert-base already uses the linear schedule: that variant is the baseline there
    resolved = resolve(SWEEPS["lr_schedules"], preset="bert-base")
    linear = next(v for v in resolved.variants if v.name == "linear decay")
    assert linear.same_as == BASELINE
    assert "linear decay" not in {t.variant for t in resolved.trials()}


def test_group_ablation_resets_to_bert_but_keeps_the_shape() -> None:
    resolved = resolve(SWEEPS["group_ablation"], preset="tiny")
    arch = next(v for v in resolved.variants if v.name == "original BERT architecture").config
    bert = bert_base()
    assert arch.model.norm_scheme == bert.model.norm_scheme == "post"
    assert arch.model.position_embedding == "learned" and arch.model.qkv_bias and arch.model.head_transform
    assert arch.model.num_layers == resolved.base.model.num_layers  # the preset's size, not BERT's
    training = next(v for v in resolved.variants if v.name == "original BERT training").config
    assert training.optim.lr == bert.optim.lr and training.train.schedule == "linear"
    assert training.objective.mask_rate == 0.15 and training.model == resolved.base.model
    data = next(v for v in resolved.variants if v.name == "original BERT data").config
    assert data.data.compressibility is None and data.data.ordering == "random"


def test_relative_overrides_follow_the_preset() -> None:
    tiny = resolve(SWEEPS["batch_size"], preset="tiny")
    short = resolve(SWEEPS["batch_size"], preset="crammed-bert-short")
    x2 = {r.base.train.batch_size: next(v for v in r.variants if v.name == "batch 2x").config.train.batch_size
          for r in (tiny, short)}
    assert x2 == {8: 16, 512: 1024}
    quarter = next(v for v in tiny.variants if v.name == "batch 0.25x").config.train
    assert quarter.batch_size == 2 and quarter.batch_size % quarter.micro_batch_size == 0


def test_search_sweep_resolves() -> None:
    resolved = resolve(SWEEPS["peak_lr"], preset="tiny", num_trials=5)
    assert resolved.num_trials == 5 and resolved.seeds == (0,)
    with pytest.raises(ConfigError, match="--trials"):
        resolve(SWEEPS["peak_lr"], preset="tiny", seeds=3)


def test_default_budget_and_overrides() -> None:
    lr = resolve(SWEEPS["lr_schedules"], preset="tiny")
    assert lr.base.budget.tokens == WORK_BUDGET_TOKENS["tiny"] and "tiny" in lr.budget_text
    gpu = resolve(SWEEPS["optimizers"], preset="small")
    assert gpu.base.budget.seconds == PRESETS["small"]().budget.seconds
    custom = resolve(SWEEPS["optimizers"], preset="tiny", budget="50ktok", overrides=["optim.lr=0.004"])
    assert custom.base.budget.tokens == 50_000 and custom.base.budget.seconds is None
    assert all(v.config.optim.lr == 0.004 for v in custom.variants if "optim.lr" not in v.overrides)


@pytest.mark.parametrize("text,expected", [
    ("90s", {"budget.seconds": 90.0}), ("10m", {"budget.seconds": 600.0}), ("1h", {"budget.seconds": 3600.0}),
    ("1.5h", {"budget.seconds": 5400.0}), ("50Mtok", {"budget.tokens": 5e7}), ("2e17flop", {"budget.flops": 2e17}),
    ("300ktok", {"budget.tokens": 3e5}),
])
def test_parse_budget(text: str, expected: dict) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["10x", "", "tok", "-5s", "0s", "1e400s"])
def test_bad_budget(text: str) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown sweep 'nope'; valid: lr_schedules"):
        get_sweep("nope")
    with pytest.raises(ConfigError, match="unknown flag 'model.foo'"):
        resolve(SWEEPS["dropout"], preset="tiny", overrides=["model.foo=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve(SWEEPS["dropout"], preset="huge")
    broken = Sweep(name="broken", section="training", axis="x", variants={"bad": {"train.schedule": "zigzag"}})
    with pytest.raises(ConfigError, match="variant 'bad'.*zigzag"):
        resolve(broken, preset="tiny")
    assert isinstance(resolve(SWEEPS["dropout"], preset="tiny").base, RunConfig)
