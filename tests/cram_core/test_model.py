"""cram_core.model: every ModelConfig knob builds, trains one step and really changes the computation;
"off" settings equal the baseline; the FLOP formula matches torch's FLOP counter; masks, compile, bf16."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import typing

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cram_core import model as M
from cram_core.config import ModelConfig
from cram_core.model import build_model, training_flops_per_sequence

VOCAB, SEQ, BATCH, NUM_PRED = 97, 16, 2, 4
BASE = ModelConfig(num_layers=2, hidden_size=32, num_heads=4, ffn_size=128, max_seq_len=SEQ)

# Non-default values for the fields that are not Literal or bool (those are enumerated from the type).
NUMERIC_VARIANTS: dict[str, list[typing.Any]] = {
    "num_layers": [3],
    "hidden_size": [48],
    "num_heads": [2],
    "ffn_size": [64],
    "norm_eps": [1e-6],
    "embedding_size": [16],
    "layer_drop": [0.9],  # 2 blocks: a seeded step that skips nothing is then very unlikely
    "ffn_every": [2],
    "dropout": [0.1],
    "attention_dropout": [0.1],
    "init_std": [0.05],
}
OWN_TESTS = {"max_seq_len", "sparse_prediction"}  # capacity / equal-logits knobs, tested below


def _variants() -> list[tuple[str, typing.Any]]:
    hints = typing.get_type_hints(ModelConfig)
    out = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in OWN_TESTS:
            continue
        default = getattr(BASE, f.name)
        if typing.get_origin(hints[f.name]) is typing.Literal:
            out += [(f.name, v) for v in typing.get_args(hints[f.name]) if v != default]
        elif hints[f.name] is bool:
            out.append((f.name, not default))
        else:
            out += [(f.name, v) for v in NUMERIC_VARIANTS[f.name]]
    return out


VARIANTS = _variants()


def _batch(seed: int = 0, seq_len: int = SEQ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, seq_len), generator=g)
    positions = torch.stack([torch.randperm(seq_len, generator=g)[:NUM_PRED] for _ in range(BATCH)])
    targets = torch.randint(0, VOCAB, (BATCH, NUM_PRED), generator=g)
    return tokens, positions, targets


def _build(cfg: ModelConfig, seed: int = 0) -> M.CrammedBert:
    torch.manual_seed(seed)
    return build_model(cfg, VOCAB)


def _logits_after_one_step(cfg: ModelConfig) -> torch.Tensor:
    """Train-mode logits after one SGD step from a seeded init: zero-initialised parameters (biases)
    only show their effect once trained, and shape-changing knobs are compared on equal footing."""
    model = _build(cfg).train()
    tokens, positions, targets = _batch()
    loss = F.cross_entropy(model(tokens, positions).flatten(0, 1), targets.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} gets no gradient"
            assert torch.isfinite(p.grad).all(), name
            p -= 0.5 * p.grad
    torch.manual_seed(1)
    with torch.no_grad():
        return model(tokens, positions)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from threads, and on a busy shared CPU torch's spinning worker threads
    # make this file ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baseline_logits() -> torch.Tensor:
    return _logits_after_one_step(BASE)


# ---------------------------------------------------------------- every knob


def test_every_field_is_covered() -> None:
    covered = {name for name, _ in VARIANTS} | OWN_TESTS
    assert covered == {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize(
    ("registry", "field"),
    [
        (M.ACTIVATIONS, "activation"),
        (M.NORMS, "norm"),
        (M.NORM_SCHEMES, "norm_scheme"),
        (M.MLPS, "mlp"),
        (M.POSITIONS, "position_embedding"),
        (M.ATTENTIONS, "attention"),
        (M.INITS, "init"),
    ],
)
def test_registry_matches_config_choices(registry: dict, field: str) -> None:
    assert set(registry) == set(typing.get_args(typing.get_type_hints(ModelConfig)[field]))


@pytest.mark.parametrize(("field", "value"), VARIANTS, ids=[f"{f}={v}" for f, v in VARIANTS])
def test_knob_changes_computation(field: str, value: typing.Any, baseline_logits: torch.Tensor) -> None:
    logits = _logits_after_one_step(dataclasses.replace(BASE, **{field: value}))
    assert logits.shape == (BATCH, NUM_PRED, VOCAB)
    assert torch.isfinite(logits).all()
    # Deterministic CPU kernels make a no-op knob bitwise equal, so any difference is a real one (some
    # are tiny at init scale: gelu vs gelu-tanh differ by ~1e-7 here; see test_activations_differ).
    assert not torch.equal(logits, baseline_logits)


def test_activations_differ() -> None:
    x = torch.linspace(-4, 4, 101)
    outputs = {name: make()(x) for name, make in M.ACTIVATIONS.items()}
    for a in outputs:
        for b in outputs:
            assert a == b or (outputs[a] - outputs[b]).abs().max() > 1e-4, (a, b)


@pytest.mark.parametrize(
    ("field", "value"), [("activation", "swish"), ("norm", "batchnorm"), ("position_embedding", "alibi"),
                         ("attention", "flash"), ("mlp", "moe"), ("init", "xavier"), ("norm_scheme", "mid")]
)
def test_unknown_choice_lists_valid_names(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="valid: "):
        build_model(dataclasses.replace(BASE, **{field: value}), VOCAB)


def test_rotary_with_fourier_is_rejected() -> None:
    with pytest.raises(ValueError, match="rotary"):
        build_model(dataclasses.replace(BASE, attention="fourier", position_embedding="rotary"), VOCAB)


def test_sparse_prediction_equal_logits_less_compute() -> None:
    tokens, positions, _ = _batch()
    sparse = _build(BASE).eval()
    dense = _build(dataclasses.replace(BASE, sparse_prediction=False)).eval()
    torch.testing.assert_close(sparse(tokens, positions), dense(tokens, positions))
    flops = [training_flops_per_sequence(m.cfg, VOCAB, SEQ, NUM_PRED) for m in (sparse, dense)]
    assert flops[0] < flops[1]


@pytest.mark.parametrize("kind", ["learned", "sinusoidal", "scaled-sinusoidal"])
def test_max_seq_len_bounds_absolute_positions(kind: str) -> None:
    long_tokens, long_positions, _ = _batch(seq_len=2 * SEQ)
    short = _build(dataclasses.replace(BASE, position_embedding=kind, max_seq_len=SEQ))
    with pytest.raises((IndexError, RuntimeError)):
        short(long_tokens, long_positions)
    longer = _build(dataclasses.replace(BASE, position_embedding=kind, max_seq_len=2 * SEQ))
    assert longer(long_tokens, long_positions).shape == (BATCH, NUM_PRED, VOCAB)


# ---------------------------------------------------------------- "off" settings equal the baseline


def test_deterministic_knobs_off_train_equals_eval() -> None:
    model = _build(BASE)  # layer_drop=0, dropout=0, attention_dropout=0
    tokens, positions, _ = _batch()
    torch.testing.assert_close(model.train()(tokens, positions), model.eval()(tokens, positions), rtol=0, atol=0)


@pytest.mark.parametrize(("field", "value"), [("layer_drop", 0.5), ("dropout", 0.1), ("attention_dropout", 0.1)])
def test_stochastic_knobs_inactive_in_eval(field: str, value: float) -> None:
    tokens, positions, _ = _batch()
    base = _build(BASE).eval()(tokens, positions)
    varied = _build(dataclasses.replace(BASE, **{field: value})).eval()(tokens, positions)
    torch.testing.assert_close(varied, base, rtol=0, atol=0)


def test_layer_drop_skips_whole_blocks_reproducibly() -> None:
    tokens, _, _ = _batch()
    model = _build(dataclasses.replace(BASE, layer_drop=0.5)).train()
    full = model.eval().encode(tokens)
    model.train()

    def draws() -> list[torch.Tensor]:
        torch.manual_seed(123)
        return [model.encode(tokens) for _ in range(20)]

    first, second = draws(), draws()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    skipped = [not torch.equal(out, full) for out in first]
    assert any(skipped) and not all(skipped)


def test_ffn_every_one_is_default_and_k_thins_mlps() -> None:
    tokens, positions, _ = _batch()
    explicit = _build(dataclasses.replace(BASE, ffn_every=1))
    default = _build(BASE)
    assert explicit.state_dict().keys() == default.state_dict().keys()
    torch.testing.assert_close(explicit(tokens, positions), default(tokens, positions), rtol=0, atol=0)
    thinned = _build(dataclasses.replace(BASE, num_layers=4, ffn_every=2))
    assert [isinstance(b.ffn, torch.nn.Identity) for b in thinned.blocks] == [True, False, True, False]


@pytest.mark.parametrize("kind", list(M.POSITIONS))
def test_default_position_ids_are_arange(kind: str) -> None:
    model = _build(dataclasses.replace(BASE, position_embedding=kind)).eval()
    tokens, positions, _ = _batch()
    arange = torch.arange(SEQ).expand(BATCH, SEQ)
    default = model(tokens, positions)
    torch.testing.assert_close(default, model(tokens, positions, arange), rtol=0, atol=0)
    reversed_positions = model(tokens, positions, arange.flip(1))
    assert torch.allclose(reversed_positions, default) == (kind == "none")  # position_ids really used


# ---------------------------------------------------------------- params and init


def test_num_params() -> None:
    tied = _build(BASE)
    assert tied.num_params() == sum(p.numel() for p in tied.parameters())
    assert tied.num_params() - tied.num_params(non_embedding=True) == VOCAB * BASE.hidden_size
    untied = _build(dataclasses.replace(BASE, tie_embeddings=False, position_embedding="learned"))
    table_params = 2 * VOCAB * BASE.hidden_size + SEQ * BASE.hidden_size
    assert untied.num_params() - untied.num_params(non_embedding=True) == table_params


def test_tied_decoder_uses_input_table() -> None:
    factorised = _build(dataclasses.replace(BASE, embedding_size=16))
    assert factorised.head.weight is None
    assert factorised.head.to_embedding.weight.shape == (16, BASE.hidden_size)
    assert factorised.embeddings.project.weight.shape == (BASE.hidden_size, 16)


@pytest.mark.parametrize("scheme", list(M.INITS))
def test_init_scheme_stds(scheme: str) -> None:
    cfg = dataclasses.replace(BASE, hidden_size=64, ffn_size=256, num_layers=8, init=scheme, linear_bias=True)
    model = _build(cfg)
    std = {"normal": 0.02, "small": math.sqrt(2 / (5 * 64)), "scaled": 0.02}[scheme]
    out_std = std / math.sqrt(16) if scheme == "scaled" else std
    block = model.blocks[0]
    assert block.mixer.fn.qkv.weight.std().item() == pytest.approx(std, rel=0.1)
    assert block.mixer.fn.out.weight.std().item() == pytest.approx(out_std, rel=0.1)
    assert block.ffn.fn.fc_out.weight.std().item() == pytest.approx(out_std, rel=0.1)
    assert torch.all(block.ffn.fn.fc_in.bias == 0) and torch.all(block.mixer.norm_in.weight == 1)
    assert model.embeddings.positions.scale.item() == pytest.approx(64**-0.5)


# ---------------------------------------------------------------- FLOPs


FLOP_BASE = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, ffn_size=256, max_seq_len=32)
FLOP_CASES = {
    "glu-sparse-tied": {},
    "plain": {"mlp": "plain"},
    "dense": {"sparse_prediction": False},
    "untied": {"tie_embeddings": False},
    "factorised-tied": {"embedding_size": 32},
    "factorised-untied": {"embedding_size": 32, "tie_embeddings": False},
    "head-transform": {"head_transform": True},
    "ffn-every-2-rotary": {"ffn_every": 2, "position_embedding": "rotary"},
    "fourier": {"attention": "fourier"},
}


@pytest.mark.parametrize("case", list(FLOP_CASES))
def test_flops_match_flop_counter(case: str) -> None:
    cfg = dataclasses.replace(FLOP_BASE, **FLOP_CASES[case])
    model = _build(cfg)
    seq_len, num_pred = 32, 8
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, seq_len), generator=g)
    positions = torch.randint(0, seq_len, (BATCH, num_pred), generator=g)
    # The math SDPA backend decomposes into matmuls the counter sees; CPU flash attention is not counted.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(tokens, positions)
        F.cross_entropy(logits.flatten(0, 1), positions.flatten()).backward()
    measured = counter.get_total_flops() / BATCH
    estimate = training_flops_per_sequence(cfg, VOCAB, seq_len, num_pred)
    assert estimate == pytest.approx(measured, rel=0.05)
    assert model.flops_per_sequence(seq_len, num_pred) == estimate


# ---------------------------------------------------------------- masks, precision, compile


@pytest.mark.parametrize("kind", ["scaled-sinusoidal", "learned", "rotary"])
def test_attention_mask_hides_padding(kind: str) -> None:
    model = _build(dataclasses.replace(BASE, position_embedding=kind)).eval()
    tokens, _, _ = _batch()
    lengths = [10, 13]
    mask = torch.arange(SEQ)[None, :] < torch.tensor(lengths)[:, None]
    padded = model.encode(tokens, attention_mask=mask)
    other_padding = model.encode(torch.where(mask, tokens, 0), attention_mask=mask)
    for i, n in enumerate(lengths):
        alone = model.encode(tokens[i : i + 1, :n])[0]
        torch.testing.assert_close(padded[i, :n], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other_padding[i, :n], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"attention": "fourier"}, {"position_embedding": "rotary", "norm": "rmsnorm"}, {"norm_scheme": "post"}],
    ids=["default", "fourier", "rotary-rmsnorm", "post"],
)
def test_bf16_autocast(overrides: dict) -> None:
    model = _build(dataclasses.replace(BASE, **overrides))
    tokens, positions, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens, positions)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_compiles_without_graph_breaks() -> None:
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    model = _build(dataclasses.replace(BASE, layer_drop=0.5, dropout=0.1)).eval()
    tokens, positions, _ = _batch()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(tokens, positions), model(tokens, positions), rtol=1e-4, atol=1e-4)
    compiled.train()  # the training graph adds dropout and the layer-drop draw
    logits = compiled(tokens, positions)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
