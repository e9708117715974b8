"""The compile warm-up's graph key follows every impl field that reaches the compiled step."""

from __future__ import annotations

import dataclasses

from cram_core.config import ImplConfig
from cram_core.train import parse_config
from cram_core.warmup import GRAPH_FREE_IMPL_FIELDS, graph_key


def test_every_impl_field_but_the_graph_free_ones_changes_the_key() -> None:
    base = parse_config("tiny", ["impl.precision=bf16"])
    changed = {"device": "cuda", "precision": "fp16", "compile": "on", "compile_mode": "max-autotune",
               "residual_dtype": "autocast"}
    fields = {f.name for f in dataclasses.fields(ImplConfig)}
    assert set(changed) | set(GRAPH_FREE_IMPL_FIELDS) == fields, "a new impl field: decide whether it shapes the graph"
    keys = {name: graph_key(dataclasses.replace(base, impl=dataclasses.replace(base.impl, **{name: value})))
            for name, value in changed.items()}
    assert graph_key(base) not in keys.values() and len(set(keys.values())) == len(keys)
    for name, value in (("threads", 3), ("fused_optimizer", False)):
        assert graph_key(dataclasses.replace(base, impl=dataclasses.replace(base.impl, **{name: value}))) \
            == graph_key(base)
