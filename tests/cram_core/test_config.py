import dataclasses

import pytest

from cram_core.config import (
    GROUPS,
    BudgetConfig,
    ConfigError,
    RunConfig,
    apply_overrides,
    field_docs,
    list_flags,
)
from cram_core.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_round_trips(name):
    cfg = get_preset(name)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.hash() == cfg.hash()


def test_crammed_bert_preset_is_the_papers_final_recipe():
    cfg = get_preset("crammed-bert")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.num_layers, m.hidden_size, m.ffn_size, m.num_heads) == (16, 768, 3072, 12)
    assert (m.qkv_bias, m.linear_bias, m.decoder_bias, m.mlp, m.norm_scheme) == (False, False, False, "glu", "pre")
    assert m.position_embedding == "scaled-sinusoidal" and m.tie_embeddings and not m.head_transform
    assert m.sparse_prediction and m.dropout == 0.0
    assert (o.name, o.lr, o.beta2, o.eps, o.weight_decay, o.grad_clip) == ("adamw", 1e-3, 0.98, 1e-12, 0.01, 0.5)
    assert (t.schedule, t.batch_size, t.batch_ramp) == ("triangle", 8192, 0.6)
    assert cfg.objective.mask_rate == 0.25
    assert (cfg.data.vocab_size, cfg.data.compressibility, cfg.data.ordering) == (32768, 0.25, "sentence-count")


def test_every_field_is_documented():
    for cls in GROUPS.values():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_overrides_are_typed():
    cfg = apply_overrides(
        get_preset("tiny"),
        ["model.norm_scheme=post", "optim.lr=3e-4", "train.batch_size=64", "model.qkv_bias=true",
         "model.embedding_size=none", "data.compressibility=none", "train.seq_len_curriculum=16:0.5"],
    )
    assert cfg.model.norm_scheme == "post" and cfg.optim.lr == 3e-4 and cfg.train.batch_size == 64
    assert cfg.model.qkv_bias is True and cfg.model.embedding_size is None and cfg.data.compressibility is None
    assert cfg.train.curriculum() == [(16, 0.5)]
    # dict form (sweep definitions) with typed values
    cfg2 = apply_overrides(get_preset("tiny"), {"optim.lr": 3e-4, "model.qkv_bias": True})
    assert cfg2.optim.lr == 3e-4 and cfg2.model.qkv_bias is True


def test_setting_one_budget_kind_replaces_the_presets():
    cfg = apply_overrides(get_preset("tiny"), ["budget.tokens=5e6"])
    assert cfg.budget == BudgetConfig(tokens=5e6)
    assert (cfg.budget.kind, cfg.budget.amount) == ("tokens", 5e6)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.nope=1", "valid model flags: model.num_layers"),
        ("nope.x=1", "valid groups: model"),
        ("model.norm=batchnorm", "valid: layernorm, rmsnorm"),
        ("train.schedule=zigzag", "valid: constant"),
        ("train.batch_size=1.5", "expected an integer"),
        ("optim.lr=fast", "expected a number"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("model.qkv_bias=maybe", "expected a boolean"),
        ("model.num_heads=5", "divisible"),
        ("train.micro_batch_size=7", "multiple"),
        ("train.seq_len_curriculum=abc", "expected 'LEN:P"),
        ("data.seq_len=1024", "model.max_seq_len"),
        ("budget.seconds=0", "must be > 0"),
        ("novalue", "expected group.field=value"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_what_is_valid(override, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_preset("tiny"), [override])
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg


def test_hash_ignores_seed_but_not_other_fields():
    base = get_preset("tiny")
    assert apply_overrides(base, ["train.seed=3"]).hash() == base.hash()
    assert apply_overrides(base, ["optim.lr=1e-4"]).hash() != base.hash()


def test_list_flags_covers_every_field():
    lines = list_flags()
    flags = {line.split()[0] for line in lines}
    expected = {f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    assert flags == expected
    assert any("{pre,post,sandwich}" in line for line in lines if line.startswith("model.norm_scheme"))
