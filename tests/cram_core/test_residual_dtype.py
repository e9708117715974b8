"""impl.residual_dtype: the residual stream between blocks in fp32 (default, as before the field) or in the
autocast dtype. CPU autocast runs bf16, so the numerics run without CUDA; CUDA autocast additionally returns
fp32 from norms, which the tests emulate on the CPU with a norm that returns fp32 (and check on CUDA)."""

import json
import os
import shutil

import pytest
import torch
import torch.nn as nn

from cram_core import hardware
from cram_core import model as model_module
from cram_core.config import ConfigError, ImplConfig, RunConfig, apply_overrides
from cram_core.model import Residual
from cram_core.presets import get_preset
from cram_core.train import _loss_function, build_parts, forward_loss

VOCAB = 2048
SCHEMES = ["pre", "post", "sandwich"]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def parts_for(*overrides):
    cfg = apply_overrides(get_preset("tiny"), ["impl.threads=1", "impl.compile=off", *overrides])
    return build_parts(cfg, VOCAB)


def tokens(device="cpu", batch=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(5, VOCAB, (batch, 64), generator=gen).to(device)


def loss_and_grads(parts):
    loss = forward_loss(parts, tokens(parts.device.type), parts.objective, parts.generator)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in parts.model.named_parameters()}


def assert_rounded_but_close(grads):
    """The rounded stream changes every run's gradients, yet they point the way the fp32 stream's do."""
    assert any(not torch.equal(grads["autocast"][n], g) for n, g in grads["fp32"].items())
    flat = {c: torch.cat([g.flatten() for g in grads[c].values()]) for c in grads}
    assert torch.nn.functional.cosine_similarity(flat["autocast"], flat["fp32"], dim=0) > 0.99


def stream_dtypes(model):
    """Records the dtype of every tensor that travels the stream: each residual's input and output."""
    seen = []

    def hook(module, args, out):
        seen.extend([args[0].dtype, out.dtype])

    for m in model.modules():
        if isinstance(m, Residual):
            m.register_forward_hook(hook)
    return seen


def residual_forward_before_the_field(self, x, *fn_args):
    """Residual.forward as it was before impl.residual_dtype: the reference for the default."""
    return self.norm_sum(x + self.norm_out(self.dropout(self.fn(self.norm_in(x), *fn_args))))


class Fp32OutLayerNorm(nn.LayerNorm):
    """What CUDA autocast makes of a LayerNorm (fp32 list): fp32 out, whatever comes in."""

    def forward(self, x):
        return super().forward(x.float())


def test_choices_and_errors_are_one_line():
    tiny = get_preset("tiny")
    assert tiny.impl.residual_dtype == "fp32"
    with pytest.raises(ConfigError, match=r"impl\.residual_dtype: .*'bf16'.*fp32, autocast") as e:
        apply_overrides(tiny, ["impl.residual_dtype=bf16"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="impl.precision=fp32 has none; valid with fp32: fp32"):
        apply_overrides(tiny, ["impl.precision=fp32", "impl.residual_dtype=autocast"])
    cpu = torch.device("cpu")  # precision auto is fp32 on the CPU: caught where the device is known
    with pytest.raises(ConfigError, match="impl.precision=auto runs fp32 on cpu; valid here: impl.residual_dtype=fp32"):
        hardware.check_precision(ImplConfig(residual_dtype="autocast"), cpu)
    for precision, dtype in [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp8", torch.bfloat16)]:
        assert hardware.stream_dtype(ImplConfig(precision=precision, residual_dtype="autocast"), cpu) == dtype
        assert hardware.stream_dtype(ImplConfig(precision=precision), cpu) is None


def test_bad_value_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    from cram_core.bench import main as bench_main
    from cram_core.train import main as train_main

    assert bench_main(["--preset", "tiny", "impl.residual_dtype=autocast"]) == 2  # auto = fp32 on the CPU
    err = capsys.readouterr().err
    assert "impl.residual_dtype=autocast needs an autocast dtype" in err and err.count("\n") == 1
    out = tmp_path / "run"
    assert train_main(["--preset", "tiny", "impl.residual_dtype=autocast", "--out", str(out), "--quiet"]) == 2
    assert "needs an autocast dtype" in capsys.readouterr().err and not out.exists()


def test_the_default_keeps_the_trial_keys_and_autocast_gets_its_own():
    base = get_preset("tiny")
    d = base.to_dict()
    del d["impl"]["residual_dtype"]  # a config stored before the field
    assert RunConfig.from_dict(json.loads(json.dumps(d))).hash() == base.hash()
    assert apply_overrides(base, ["impl.precision=bf16", "impl.residual_dtype=autocast"]).hash() != \
        apply_overrides(base, ["impl.precision=bf16"]).hash()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fp32_is_bit_identical_to_the_code_before_the_field(scheme, monkeypatch):
    """Under bf16 autocast (fp32 stream) and fp32: same losses and gradients, bit for bit."""
    for precision in ("bf16", "fp32"):
        overrides = [f"model.norm_scheme={scheme}", f"impl.precision={precision}"]
        now = loss_and_grads(parts_for(*overrides, "impl.residual_dtype=fp32"))
        with monkeypatch.context() as m:
            m.setattr(Residual, "forward", residual_forward_before_the_field)
            before = loss_and_grads(parts_for(*overrides))
        assert torch.equal(now[0], before[0]), (precision, now[0], before[0])
        for name, grad in before[1].items():
            assert torch.equal(now[1][name], grad), (precision, name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_autocast_keeps_a_bf16_stream_and_stays_close(scheme):
    losses, grads, dtypes = {}, {}, {}
    for choice in ("fp32", "autocast"):
        parts = parts_for(f"model.norm_scheme={scheme}", "impl.precision=bf16", f"impl.residual_dtype={choice}")
        dtypes[choice] = stream_dtypes(parts.model)
        losses[choice], grads[choice] = loss_and_grads(parts)
    assert set(dtypes["fp32"]) == {torch.float32} and set(dtypes["autocast"]) == {torch.bfloat16}
    assert len(dtypes["autocast"]) == 2 * 2 * 2  # 2 blocks x (attention, MLP) x (in, out)
    assert losses["autocast"] != losses["fp32"]  # the stream is rounded: a different computation
    assert abs(losses["autocast"] - losses["fp32"]) < 1e-2, losses
    assert_rounded_but_close(grads)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_stream_stays_bf16_when_norms_return_fp32(scheme, monkeypatch):
    """CUDA autocast's fp32 norms (emulated): norm_out and norm_sum outputs are cast back to the stream dtype.
    Without that cast, post-LN and sandwich would hand fp32 to the next branch."""
    monkeypatch.setitem(model_module.NORMS, "layernorm", Fp32OutLayerNorm)
    overrides = [f"model.norm_scheme={scheme}", "impl.precision=bf16", "impl.residual_dtype=autocast"]
    parts = parts_for(*overrides)
    dtypes = stream_dtypes(parts.model)
    loss, _ = loss_and_grads(parts)
    assert set(dtypes) == {torch.bfloat16} and torch.isfinite(loss)
    monkeypatch.setattr(Residual, "forward", residual_forward_before_the_field)
    parts = parts_for(*overrides)
    dtypes = stream_dtypes(parts.model)
    loss_and_grads(parts)
    assert (torch.float32 in dtypes) == (scheme != "pre")  # pre-LN's add alone keeps bf16 + bf16


@pytest.mark.slow
def test_autocast_stream_compiles_without_graph_breaks():
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    overrides = ["model.norm_scheme=sandwich", "impl.precision=bf16", "impl.residual_dtype=autocast"]
    eager, compiled = parts_for(*overrides), parts_for(*overrides, "impl.compile=on")
    masked = eager.objective.mask(tokens(), torch.Generator().manual_seed(1))
    args = (masked.input_ids, masked.positions, masked.position_ids, masked.targets)
    plain = _loss_function(compiled.model, compiled.objective, compiled.device, compiled.amp_dtype)
    assert torch._dynamo.explain(plain)(*args).graph_break_count == 0
    torch.testing.assert_close(compiled.step_loss(*args), eager.step_loss(*args), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("scheme", SCHEMES)
def test_cuda_autocast_stream_is_bf16_compiled_and_close(scheme):
    """On CUDA the norms really return fp32; the compiled step keeps the stream bf16 and tracks fp32."""
    losses, grads, dtypes = {}, {}, {}
    for choice in ("fp32", "autocast"):
        parts = parts_for(f"model.norm_scheme={scheme}", "impl.device=cuda", "impl.precision=bf16",
                          f"impl.residual_dtype={choice}")
        dtypes[choice] = stream_dtypes(parts.model)
        losses[choice], grads[choice] = loss_and_grads(parts)  # eager: the hooks see every residual
        compiled = parts_for(f"model.norm_scheme={scheme}", "impl.device=cuda", "impl.precision=bf16",
                             f"impl.residual_dtype={choice}", "impl.compile=on")
        masked = compiled.objective.mask(tokens("cuda"), torch.Generator("cuda").manual_seed(1))
        args = (masked.input_ids, masked.positions, masked.position_ids, masked.targets)
        plain = _loss_function(compiled.model, compiled.objective, compiled.device, compiled.amp_dtype)
        assert torch._dynamo.explain(plain)(*args).graph_break_count == 0
        assert torch.isfinite(compiled.step_loss(*args))
    assert set(dtypes["fp32"]) == {torch.float32} and set(dtypes["autocast"]) == {torch.bfloat16}
    # The loss alone can round to the same fp32 value (it did for pre-LN on an H200: 7.5479 both): the rounded
    # stream shows in the gradients, which must differ yet point the same way.
    assert abs(losses["autocast"] - losses["fp32"]) < 1e-2, losses
    assert_rounded_but_close(grads)
