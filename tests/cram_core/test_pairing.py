"""Common random numbers: trials that share a seed share every draw that is not the variant."""

import hashlib

import pytest
import torch

from cram_core import objective as objective_module
from cram_core.config import apply_overrides
from cram_core.model import build_model
from cram_core.presets import get_preset
from cram_core.train import build_parts, train

BASE = ["data.max_documents=400", "budget.tokens=8192", "impl.threads=1", "train.log_every=1",
        "train.eval_sequences=16", "train.batch_size=8", "train.micro_batch_size=8"]


_MASK = objective_module.MLMObjective.mask


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest()


def _draws(monkeypatch, *overrides: str) -> list[tuple[str, str, str, str]]:
    """(tokens, corrupted inputs, masked positions, global-RNG state) at every masking call of a short run."""
    seen = []

    def recording(self, tokens, generator):
        masked = _MASK(self, tokens, generator)
        seen.append((_digest(tokens), _digest(masked.input_ids), _digest(masked.positions),
                     _digest(torch.get_rng_state())))
        return masked

    monkeypatch.setattr(objective_module.MLMObjective, "mask", recording)
    cfg = apply_overrides(get_preset("tiny"), BASE + list(overrides))
    summary = train(cfg, progress=False)
    assert summary["status"] == "completed" and summary["steps"] == 16
    return seen


def test_variants_differing_in_lr_see_the_same_batches_masks_and_dropout_draws(monkeypatch):
    common = ["model.dropout=0.1", "model.attention_dropout=0.1"]
    base = _draws(monkeypatch, *common)
    other_lr = _draws(monkeypatch, *common, "optim.lr=5e-4", "train.schedule=cosine")
    assert len(base) > 16  # warm-up, every training step, the evaluation
    assert base == other_lr
    other_seed = _draws(monkeypatch, *common, "train.seed=1")
    # same data order (no stream), different masks and dropout draws
    assert [b[0] for b in base] == [o[0] for o in other_seed]
    assert [b[2] for b in base[1:17]] != [o[2] for o in other_seed[1:17]]


def _tiny_model(*overrides: str, seed: int = 0):
    cfg = apply_overrides(get_preset("tiny"), list(overrides)).model
    return dict(build_model(cfg, 2048, seed).named_parameters())


def test_same_named_same_shaped_parameters_get_the_same_init_across_architectures():
    base = _tiny_model()
    for overrides in (["model.mlp=plain"], ["model.num_layers=3"], ["model.embedding_size=32"],
                      ["model.tie_embeddings=false"]):
        other = _tiny_model(*overrides)
        shared = [n for n in base if n in other and base[n].shape == other[n].shape]
        assert "blocks.1.mixer.fn.qkv.weight" in shared, overrides
        for name in shared:
            assert torch.equal(base[name], other[name]), (overrides, name)
        if overrides == ["model.mlp=plain"]:
            assert base["blocks.0.ffn.fn.fc_out.weight"].shape != other["blocks.0.ffn.fn.fc_out.weight"].shape
    reseeded = _tiny_model(seed=1)
    assert not torch.equal(base["blocks.0.mixer.fn.qkv.weight"], reseeded["blocks.0.mixer.fn.qkv.weight"])


@pytest.mark.parametrize("overrides", [["model.num_layers=3"], ["model.mlp=plain"], ["optim.name=sgd"]])
def test_dropout_and_mask_streams_do_not_depend_on_the_architecture(overrides):
    def streams(*extra):
        cfg = apply_overrides(get_preset("tiny"), ["impl.threads=1", *extra])
        parts = build_parts(cfg, 2048)
        return _digest(torch.get_rng_state()), _digest(parts.generator.get_state())

    assert streams() == streams(*overrides)
    assert streams() != streams("train.seed=1")
