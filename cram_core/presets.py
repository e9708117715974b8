"""Presets: plain functions that start from a base RunConfig and change a few fields.

``crammed-bert`` is the paper's final recipe (the dataclass defaults); ``bert-base`` resets every group
to original BERT; ``tiny`` is for a laptop CPU; ``small`` and ``crammed-bert-short`` are for sweeps whose
budget is minutes, where the paper's 8192-sequence batch would make only a few hundred steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from cram_core.cli import unknown_name
from cram_core.config import (
    BudgetConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)


def crammed_bert() -> RunConfig:
    """The paper's final recipe (ABLATIONS.md): 16x768 pre-LN GLU BERT, triangle LR, batch 8192 ramped."""
    # Micro-batch 256 by measurement (H200, bench, one device call, docs/SPEED.md): 512 is 3.8% faster
    # (611,853 vs 589,228 tokens/s) at 1.9x the memory (27.1 vs 14.4 GB); 256 keeps the preset on 16 GB
    # cards and the batch ramp starting at 256 sequences.
    # Re-measure with `python -m cram_core.bench --preset crammed-bert --vary train.micro_batch_size=256,512`.
    return RunConfig(budget=BudgetConfig(seconds=86400.0), train=TrainConfig(micro_batch_size=256))


def crammed_bert_short() -> RunConfig:
    """crammed-bert architecture with a batch that fits a budget of minutes (see DESIGN.md, The budget)."""
    cfg = crammed_bert()
    return replace(
        cfg,
        train=replace(cfg.train, batch_size=512, micro_batch_size=256, batch_ramp=0.3),
        budget=BudgetConfig(seconds=600.0),
    )


def bert_base() -> RunConfig:
    """Original BERT-base: post-LN, learned positions, all biases, head transform, dropout, 15% masking."""
    return RunConfig(
        model=ModelConfig(
            num_layers=12,
            qkv_bias=True,
            linear_bias=True,
            decoder_bias=True,
            mlp="plain",
            norm_scheme="post",
            final_norm=False,
            position_embedding="learned",
            max_seq_len=512,
            head_transform=True,
            sparse_prediction=False,
            dropout=0.1,
            attention_dropout=0.1,
        ),
        objective=ObjectiveConfig(mask_rate=0.15),
        optim=OptimConfig(lr=1e-4, beta2=0.999, eps=1e-6, grad_clip=1.0),
        train=TrainConfig(schedule="linear", warmup=0.01, batch_size=256, micro_batch_size=128, batch_ramp=0.0),
        data=DataConfig(compressibility=None, ordering="random"),
        budget=BudgetConfig(seconds=86400.0),
    )


def small() -> RunConfig:
    """A 4-layer crammed-bert for quick GPU sweeps or patient CPU runs."""
    cfg = crammed_bert()
    return replace(
        cfg,
        model=replace(cfg.model, num_layers=4, hidden_size=256, num_heads=4, ffn_size=1024),
        train=replace(cfg.train, batch_size=256, micro_batch_size=64, batch_ramp=0.3),
        data=replace(cfg.data, vocab_size=8192),
        budget=BudgetConfig(seconds=300.0),
    )


def gpu_sweep() -> RunConfig:
    """A 4x512 crammed-bert (pre-LN GLU, 8 heads, FFN 2048) at batch 128 for 3-seed sweeps on one GPU.

    Found by docs/results/preset_search.md (one H200, four trials packed per GPU, 100 s each): at equal GPU
    time it was the only candidate past the initial MLM plateau (held-out 3.50; crammed-bert-short 6.06,
    8x512 5.69). Its seeds leave the plateau after 25-35M tokens (docs/results/lr_schedules_40M.md), so its
    budget is 80M tokens, about 2 min of an H200 with four trials packed per GPU. Sweeps on it default to
    that budget in work (WORK_BUDGET_TOKENS in sweeps/definitions.py), so that packed trials don't measure
    each other, and pack four trials per GPU (TRIALS_PER_GPU)."""
    cfg = crammed_bert()
    return replace(
        cfg,
        model=replace(cfg.model, num_layers=4, hidden_size=512, num_heads=8, ffn_size=2048),
        train=replace(cfg.train, batch_size=128, micro_batch_size=128, batch_ramp=0.0),
        budget=BudgetConfig(tokens=80e6),
    )


def tiny() -> RunConfig:
    """A 2-core-CPU model on the bundled sample: a visible loss drop in 30 seconds.

    Sized for the first sweep on 2 cores (README): batch 8 so a CPU trial of 100k tokens makes ~200 optimizer
    steps (a schedule then has room to matter), 512 held-out sequences so the held-out loss is precise to
    ~0.01 nats between paired trials (at 64 the eval sample alone put ~0.03 nats of noise on each Δ)."""
    cfg = crammed_bert()
    return replace(
        cfg,
        model=replace(cfg.model, num_layers=2, hidden_size=128, num_heads=4, ffn_size=512, max_seq_len=64),
        train=replace(cfg.train, batch_size=8, micro_batch_size=8, batch_ramp=0.0, log_every=5, eval_sequences=512),
        optim=replace(cfg.optim, lr=2e-3),
        data=replace(cfg.data, vocab_size=2048, seq_len=64),
        budget=BudgetConfig(seconds=30.0),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "tiny": tiny,
    "small": small,
    "crammed-bert": crammed_bert,
    "crammed-bert-short": crammed_bert_short,
    "gpu-sweep": gpu_sweep,
    "bert-base": bert_base,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(unknown_name("preset", name, PRESETS))
    return PRESETS[name]()
