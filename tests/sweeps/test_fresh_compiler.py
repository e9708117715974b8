"""A reused Ray worker resets torch's compiler when the next trial's graph differs (sweeps.trial)."""

from __future__ import annotations

import torch._dynamo

from cram_core.config import apply_overrides
from cram_core.presets import get_preset
from sweeps import trial


def test_the_compiler_is_reset_only_when_the_graph_changes(monkeypatch) -> None:
    resets: list[int] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(trial, "_last_graph", [])
    base = get_preset("gpu-sweep")
    same_graph = apply_overrides(base, ["train.schedule=cosine", "optim.lr=2e-3", "train.seed=1"])
    other_batch = apply_overrides(base, ["train.batch_size=64", "train.micro_batch_size=64"])
    other_norm = apply_overrides(base, ["model.norm_scheme=post"])
    steps = [(base, False), (same_graph, False), (other_batch, True), (other_batch, False), (other_norm, True),
             (base, True)]
    for cfg, expect in steps:
        assert trial.fresh_compiler_for(cfg) is expect
    assert len(resets) == 3
