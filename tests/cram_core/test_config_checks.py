"""Small config and CLI fixes (issue 11, item 15): ffn_every bound, intermixed overrides, aligned
--list-flags columns, the final_norm doc."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from cram_core import train as train_module
from cram_core.config import ConfigError, ModelConfig, RunConfig, apply_overrides, field_docs, list_flags
from cram_core.model import build_model
from cram_core.presets import get_preset


def test_ffn_every_beyond_num_layers_is_a_one_line_error(capsys):
    """Before: model.ffn_every=3 on 2 layers silently removed every MLP."""
    with pytest.raises(ConfigError, match=r"model.ffn_every \(3\) must be <= model.num_layers \(2\)"):
        apply_overrides(get_preset("tiny"), ["model.ffn_every=3"])
    assert apply_overrides(get_preset("tiny"), ["model.ffn_every=2"]).model.ffn_every == 2
    assert train_module.main(["--preset", "tiny", "model.ffn_every=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.ffn_every" in err


def test_overrides_after_options_are_accepted(monkeypatch):
    """Before: `--quiet data.max_documents=50` after other overrides was 'unrecognized arguments'."""
    seen = {}

    def fake_train(cfg: RunConfig, **kw):
        seen["cfg"], seen["progress"] = cfg, kw["progress"]
        raise ConfigError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    argv = ["--preset", "tiny", "budget.tokens=2048", "--quiet", "data.max_documents=50", "optim.lr=0.01"]
    assert train_module.main(argv) == 2
    cfg = seen["cfg"]
    assert (cfg.budget.tokens, cfg.data.max_documents, cfg.optim.lr, seen["progress"]) == (2048, 50, 0.01, False)


def test_unknown_option_among_overrides_names_the_nearest(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors exit from inside parsing
        train_module.main(["--preset", "tiny", "--quiet", "optim.lr=0.01", "--outt", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --out?" in err, err


def test_list_flags_columns_line_up_across_every_group():
    """Before: the name column was padded per field name, so columns drifted after the `model` group."""
    lines = list_flags()
    assert {line.split(".")[0] for line in lines} == {"model", "objective", "optim", "train", "budget", "data", "impl"}
    columns = [re.match(r"(\S+\s+)(\S+\s+)(default=\S*\s+)", line) for line in lines]
    assert all(columns), [line for line, m in zip(lines, columns) if not m]
    type_at, default_at, doc_at = ({m.end(i) for m in columns} for i in (1, 2, 3))
    assert len(type_at) == len(default_at) == len(doc_at) == 1, (type_at, default_at, doc_at)
    norm = next(line for line in lines if line.startswith("model.norm_scheme "))
    assert "{pre,post,sandwich}" in norm and norm.split()[1] == "choice"


def test_final_norm_doc_and_effect_under_post_ln():
    """Before: the doc said final_norm only matters for pre/sandwich, but it is applied under post-LN too."""
    assert "only" not in field_docs(ModelConfig)["final_norm"]
    base = ModelConfig(num_layers=2, hidden_size=32, num_heads=4, ffn_size=128, max_seq_len=16, norm_scheme="post")
    tokens = torch.randint(5, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    outputs = []
    for final_norm in (False, True):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(base, final_norm=final_norm), 97).eval()
        with torch.no_grad():
            if final_norm:
                model.final_norm.weight.mul_(2.0)  # a trained affine map: at init it is near the identity
            outputs.append(model.encode(tokens))
    assert not torch.allclose(outputs[0], outputs[1])
