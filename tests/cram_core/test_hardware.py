"""Precision and compilation of the training step: impl.precision=fp8 (torchao float8 linears) and the
compiled loss (model + cross-entropy in one graph)."""

import os
import shutil
import sys

import pytest
import torch
import torch.nn as nn

from cram_core import hardware
from cram_core.config import ConfigError, ImplConfig, apply_overrides
from cram_core.presets import get_preset
from cram_core.train import _loss_function, build_parts, forward_loss, optimizer_step

VOCAB = 2048
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def parts_for(*overrides):
    cfg = apply_overrides(get_preset("tiny"), ["impl.threads=1", *overrides])
    return build_parts(cfg, VOCAB)


def tokens(device="cpu", batch=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(5, VOCAB, (batch, 64), generator=gen).to(device)


def float8_names(model):
    return {name for name, m in model.named_modules() if type(m).__name__ == "Float8Linear"}


def test_fp8_converts_exactly_the_block_linears_and_keeps_the_weights():
    bf16, fp8 = parts_for("impl.precision=bf16").model, parts_for("impl.precision=fp8").model
    block_linears = {n for n, m in bf16.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")}
    assert float8_names(fp8) == block_linears and len(block_linears) == 2 * 4  # qkv, out, fc_in, fc_out
    assert not float8_names(bf16)
    reference = bf16.state_dict()
    assert fp8.state_dict().keys() == reference.keys()  # checkpoints load into a bf16 model
    for key, value in fp8.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_fp8_changes_the_loss_and_its_gradients_but_not_what_is_learned():
    losses, grads = {}, {}
    for precision in ("bf16", "fp8"):
        parts = parts_for(f"impl.precision={precision}")
        loss = forward_loss(parts, tokens(), parts.objective, parts.generator)
        loss.backward()
        losses[precision] = loss.item()
        grads[precision] = parts.model.blocks[0].ffn.fn.fc_in.weight.grad
    assert losses["fp8"] != losses["bf16"] and losses["fp8"] == pytest.approx(losses["bf16"], abs=0.05)
    assert not torch.equal(grads["fp8"], grads["bf16"])
    assert torch.nn.functional.cosine_similarity(grads["fp8"].flatten(), grads["bf16"].flatten(), dim=0) > 0.95


def test_fp8_off_is_the_baseline():
    """Every other precision leaves the model object and its modules untouched."""
    parts = parts_for("impl.precision=bf16")
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert hardware.apply_precision(parts.model, ImplConfig(precision=precision), parts.device) is parts.model
    assert not float8_names(parts.model)
    assert hardware.resolve_dtype(ImplConfig(precision="fp8"), parts.device) == torch.bfloat16


@pytest.fixture
def no_torchao(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` now raises ImportError
    monkeypatch.setitem(sys.modules, "torchao.float8", None)


def test_fp8_without_torchao_is_one_line_exit_2_and_writes_nothing(no_torchao, tmp_path, capsys):
    from cram_core.bench import main as bench_main
    from cram_core.train import main as train_main

    assert bench_main(["--preset", "tiny", "impl.precision=fp8"]) == 2
    err = capsys.readouterr().err
    assert "needs torchao" in err and "valid without it: auto, fp32, bf16, fp16" in err and err.count("\n") == 1
    out = tmp_path / "run"
    assert train_main(["--preset", "tiny", "impl.precision=fp8", "--out", str(out), "--quiet"]) == 2
    assert "needs torchao" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ConfigError, match="needs torchao"):
        hardware.check_precision(ImplConfig(precision="fp8"), torch.device("cpu"))
    hardware.check_precision(ImplConfig(precision="bf16"), torch.device("cpu"))  # the others need nothing


@pytest.mark.slow
def test_compiled_step_loss_has_no_graph_break_and_matches_eager():
    """impl.compile=on compiles model + loss as one graph; the loss and the gradients are the eager ones."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    eager, compiled = parts_for("impl.compile=off"), parts_for("impl.compile=on")
    assert compiled.compiled and not eager.compiled
    masked = eager.objective.mask(tokens(), torch.Generator().manual_seed(1))
    args = (masked.input_ids, masked.positions, masked.position_ids, masked.targets)
    plain = _loss_function(compiled.model, compiled.objective, compiled.device, compiled.amp_dtype)
    assert torch._dynamo.explain(plain)(*args).graph_break_count == 0
    a, b = eager.step_loss(*args), compiled.step_loss(*args)
    a.backward()
    b.backward()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@cuda_only
def test_cuda_training_step_makes_no_host_sync():
    """A step (mask, compiled forward + loss, backward, clip, fused AdamW) never waits for the GPU."""
    parts = parts_for("impl.device=cuda")
    batch = tokens("cuda", 32)
    for _ in range(3):  # compile, then let the allocator and the fused optimizer settle
        optimizer_step(parts, [batch], 1e-3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [optimizer_step(parts, [batch], 1e-3) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


@pytest.mark.gpu
@cuda_only
def test_fp8_compiled_training_on_cuda_tracks_bf16():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability >= 8.9")
    pytest.importorskip("torchao", reason="impl.precision=fp8 needs torchao (pip install -e '.[fp8]')")
    curves = {}
    for precision in ("bf16", "fp8"):
        parts = parts_for("impl.device=cuda", f"impl.precision={precision}")
        batch = tokens("cuda", 32)
        curves[precision] = torch.stack([optimizer_step(parts, [batch], 1e-3) for _ in range(20)]).tolist()
    assert curves["fp8"] != curves["bf16"]
    assert curves["fp8"][-1] < curves["fp8"][0] - 0.5
    assert curves["fp8"] == pytest.approx(curves["bf16"], abs=0.15)


@pytest.mark.gpu
@cuda_only
def test_cuda_graphs_compile_mode_trains_like_the_default():
    """impl.compile_mode=reduce-overhead (CUDA graphs around the compiled forward + loss) is the same step."""
    curves = {}
    for mode in ("default", "reduce-overhead"):
        parts = parts_for("impl.device=cuda", f"impl.compile_mode={mode}")
        batch = tokens("cuda", 32)
        curves[mode] = torch.stack([optimizer_step(parts, [batch], 1e-3) for _ in range(10)]).tolist()
    assert curves["reduce-overhead"] == pytest.approx(curves["default"], abs=0.02)


def test_code_fingerprint_names_the_sources_not_the_checkout(tmp_path) -> None:
    from cram_core.hardware import code_fingerprint

    pkg = tmp_path / "cram_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = code_fingerprint(tmp_path)
    assert first is not None and len(first) == 12
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("junk")  # caches and other files don't count
    (pkg / "notes.txt").write_text("not code")
    assert code_fingerprint(tmp_path) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")  # one byte of one source changes it
    assert code_fingerprint(tmp_path) != first
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    assert code_fingerprint(tmp_path) == first
    (pkg / "a.py").rename(pkg / "c.py")  # so does a rename
    assert code_fingerprint(tmp_path) != first
    assert code_fingerprint(tmp_path / "elsewhere") is None


def test_versions_record_the_code_fingerprint_of_this_checkout() -> None:
    from cram_core.hardware import code_fingerprint, versions

    assert versions()["code"] == code_fingerprint() is not None
