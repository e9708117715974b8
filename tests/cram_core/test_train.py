"""End-to-end trainer tests on the bundled sample (tiny preset, token budgets so runs are reproducible)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cram_core.config import apply_overrides
from cram_core.presets import get_preset
from cram_core.train import train

GOLDEN = Path(__file__).parent / "golden" / "tiny_loss_curve.json"
# A short, fully deterministic CPU run: small corpus slice, token budget, one thread.
BASE = ["data.max_documents=400", "budget.tokens=40960", "impl.threads=1", "train.log_every=2",
        "train.eval_sequences=32"]


def run(tmp_path, *overrides, name="run", **kw):
    cfg = apply_overrides(get_preset("tiny"), BASE + list(overrides))
    out = tmp_path / name
    return train(cfg, out_dir=out, progress=False, **kw), out


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_its_records(tmp_path):
    summary, out = run(tmp_path)
    assert summary["status"] == "completed"
    metrics = read_metrics(out)
    keys = {"step", "progress", "tokens", "seconds", "loss", "lr", "batch_size", "tokens_per_second", "mfu"}
    assert keys <= set(metrics[0])
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    on_disk = json.loads((out / "summary.json").read_text())
    for k in ("status", "final_loss", "eval_loss", "tokens", "seconds", "flops", "steps", "config"):
        assert on_disk[k] is not None, k
    assert on_disk["config"]["model"]["num_layers"] == 2
    # the token budget stops within one optimizer step of its amount
    step_tokens = get_preset("tiny").train.batch_size * 64
    assert 40960 <= summary["tokens"] < 40960 + step_tokens
    assert summary["flops"] > 0 and summary["seconds"] > 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_seeded_tiny_run_reproduces_the_golden_loss_curve(tmp_path):
    summary, out = run(tmp_path)
    losses = [m["loss"] for m in read_metrics(out)]
    if not GOLDEN.exists():  # first run on a new reference: write it and fail loudly so it gets reviewed
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"losses": losses, "eval_loss": summary["eval_loss"]}, indent=1))
        pytest.fail(f"golden curve written to {GOLDEN}; review and commit it")
    golden = json.loads(GOLDEN.read_text())
    assert losses == pytest.approx(golden["losses"], rel=2e-3, abs=2e-3)
    assert summary["eval_loss"] == pytest.approx(golden["eval_loss"], rel=2e-3)


def test_resume_from_checkpoint_continues_identically(tmp_path):
    full, full_out = run(tmp_path, "train.checkpoint_every=0.5", name="full")
    ckpts = sorted((full_out / "checkpoints").iterdir())
    assert ckpts, "no checkpoint written"
    resumed, res_out = run(tmp_path, "train.checkpoint_every=0.5", name="resumed", resume=ckpts[0])
    first = {m["step"]: m["loss"] for m in read_metrics(full_out)}
    second = {m["step"]: m["loss"] for m in read_metrics(res_out)}
    assert second and set(second) <= set(first)
    for step, loss in second.items():
        assert loss == pytest.approx(first[step], rel=1e-5, abs=1e-6), step
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)
    assert resumed["tokens"] == full["tokens"] and resumed["steps"] == full["steps"]


def test_non_finite_loss_stops_with_status_diverged(tmp_path):
    summary, _ = run(tmp_path, "optim.lr=1e30", "optim.grad_clip=0", "optim.name=sgd", "budget.tokens=1e6")
    assert summary["status"] == "diverged"
    assert "non-finite" in summary["reason"] and "step" in summary["reason"]
    assert summary["tokens"] < 1e6


def test_batch_ramp_and_curriculum_reach_the_loop(tmp_path):
    _, out = run(tmp_path, "train.batch_size=96", "train.micro_batch_size=32", "train.batch_ramp=0.5",
                 "train.seq_len_curriculum=32:0.5",
                 "budget.tokens=60000")
    metrics = read_metrics(out)
    sizes = [m["batch_size"] for m in metrics]
    assert sizes[0] == 32 and sizes[-1] == 96 and sizes == sorted(sizes)
    lengths = [m["seq_len"] for m in metrics]
    assert lengths[0] == 32 and lengths[-1] == 64


def test_cli_bad_override_fails_cleanly_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "cram_core.train", "--preset", "tiny", "model.norm=batchnorm",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "valid: layernorm, rmsnorm" in proc.stderr
    assert not out.exists()


def test_cli_bad_data_source_fails_cleanly_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "cram_core.train", "--preset", "tiny",
                           f"data.source=jsonl:{tmp_path}/missing/*.jsonl.xz", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "matches no file" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not out.exists()


def test_cli_list_flags_names_every_group():
    proc = subprocess.run([sys.executable, "-m", "cram_core.train", "--list-flags"], capture_output=True, text=True)
    assert proc.returncode == 0
    groups = {line.split(".")[0] for line in proc.stdout.splitlines()}
    assert groups == {"model", "objective", "optim", "train", "budget", "data", "impl"}


def test_held_out_eval_is_identical_across_objectives(tmp_path):
    """eval_loss uses fixed masks, so two runs with the same weights but different train objectives agree."""
    from cram_core.data import prepare
    from cram_core.train import build_parts, evaluate, split_indices

    cfg = apply_overrides(get_preset("tiny"), BASE)
    prepared = prepare(cfg.data, progress=False)
    _, eval_idx = split_indices(len(prepared.tokens), 32)
    a = evaluate(build_parts(cfg, prepared.vocab_size), prepared.tokens, eval_idx, None)
    other = apply_overrides(cfg, ["objective.mask_rate=0.5", "objective.loss=focal"])
    b = evaluate(build_parts(other, prepared.vocab_size), prepared.tokens, eval_idx, None)
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_compiled_bf16_run_on_cuda(tmp_path):
    """The fast path: CUDA, bf16 autocast, torch.compile, fused AdamW, pinned prefetching loader."""
    summary, out = run(tmp_path, "impl.device=cuda", "budget.tokens=400000", "train.log_every=10")
    assert summary["status"] == "completed", summary["reason"]
    assert summary["config"]["impl"]["device"] == "cuda" and summary["timings"]["compile_s"] > 0
    metrics = read_metrics(out)
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    assert summary["memory_gb"] > 0 and "mfu" in summary


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_flag_changes_the_arithmetic_not_the_result(tmp_path, precision):
    """impl.precision autocasts the forward: a different curve from fp32, but the same learning."""
    short = ["budget.tokens=8192", "train.log_every=1"]
    _, ref_out = run(tmp_path, *short, "impl.precision=fp32", name="fp32")
    summary, out = run(tmp_path, *short, f"impl.precision={precision}", name=precision)
    assert summary["status"] == "completed"
    ref = [m["loss"] for m in read_metrics(ref_out)]
    low = [m["loss"] for m in read_metrics(out)]
    assert low != ref
    assert low == pytest.approx(ref, abs=0.05)


def test_summary_seconds_is_the_budget_time_and_excludes_evaluation(tmp_path, monkeypatch):
    """Regression: summary.json `seconds` used to read the still-running clock after evaluation."""
    import time

    import cram_core.train as train_module

    real_evaluate = train_module.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(1.0)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    summary, out = run(tmp_path, "budget.tokens=1024")  # two steps: training takes well under the 1 s sleep
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seconds"] == summary["timings"]["train_s"]
    assert summary["timings"]["eval_s"] >= 1.0 and summary["seconds"] < summary["timings"]["eval_s"]
    assert read_metrics(out)[-1]["seconds"] <= summary["seconds"]


def test_finite_blow_up_ends_diverged_with_its_reason(tmp_path):
    """Regression: optim.lr=1 ended at eval loss ~80 (ln V = 7.62) and was recorded as completed."""
    summary, out = run(tmp_path, "optim.lr=1")
    assert summary["status"] == "diverged"
    assert summary["reason"].startswith("held-out loss") and "ln V + 1 = 8.62" in summary["reason"]
    assert summary["eval_loss"] > 8.62  # kept for the record; tables only rank completed trials
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_blow_up_reason_rules():
    from functools import partial

    from cram_core.train import blow_up_reason

    ce = partial(blow_up_reason, log_every=2, vocab_size=2048, train_at_most_ce=True)  # ln V = 7.62, limit 8.62
    learning = [7.6, 7.5, 7.0, 6.5, 6.2, 6.0, 5.9, 5.9, 5.8, 5.8]
    assert ce(learning, eval_loss=5.9) is None
    assert ce([7.6] * 10, eval_loss=7.7) is None  # stuck at uniform is bad, not diverged
    assert ce(learning, eval_loss=float("nan")) is None  # no held-out set
    assert ce([], eval_loss=float("nan")) is None
    assert "held-out loss 9.00 > ln V + 1 = 8.62" in ce(learning, eval_loss=9.0)
    rose = [7.6, 7.6, 7.8, 8.0, 8.2, 8.4, 8.6, 8.8, 9.0, 9.2]  # above ln V + 1 but < 1.25 x 7.6
    assert "late train loss 9.20 > ln V + 1" in ce(rose, eval_loss=float("nan"))
    # a loss on its own scale isn't held to ln V, but a rise over its own start still counts
    other = partial(blow_up_reason, log_every=2, vocab_size=2048, train_at_most_ce=False)
    assert other([20.0] * 10, eval_loss=6.0) is None
    mse = [1.0, 1.0, 0.9, 0.9, 1.2, 1.4, 1.6, 1.8, 1.9, 1.9]
    assert "1.25 x its first logged value 1.00" in other(mse, eval_loss=6.0)
    assert other([1.0, 1.0, 0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 1.2], eval_loss=6.0) is None  # 1.2 < 1.25


# ---------------------------------------------------------------- CUDA graphs (compile_mode reduce-overhead)


def test_only_the_cuda_graph_modes_on_cuda_replay_graphs():
    import torch

    from cram_core.train import uses_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    graphs = {mode: uses_cuda_graphs(mode, cuda, True)
              for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
    assert graphs == {"default": False, "reduce-overhead": True, "max-autotune": True,
                      "max-autotune-no-cudagraphs": False}
    assert not uses_cuda_graphs("reduce-overhead", cuda, False)  # impl.compile=off: nothing is compiled
    assert not uses_cuda_graphs("reduce-overhead", cpu, True)


def _count_marks(monkeypatch):
    import torch

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    return marks


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_new_cuda_graph_step_is_a_no_op_off_cuda(monkeypatch, mode):
    import torch

    from cram_core.train import build_parts, forward_loss

    marks = _count_marks(monkeypatch)
    cfg = apply_overrides(get_preset("tiny"), ["impl.threads=1", "impl.device=cpu", f"impl.compile_mode={mode}"])
    parts = build_parts(cfg, 2048)
    assert not parts.cuda_graphs
    forward_loss(parts, torch.randint(5, 2048, (8, 64)), parts.objective, parts.generator)
    assert not marks and all(p.grad is None for p in parts.model.parameters())


def test_new_cuda_graph_step_marks_each_call_and_keeps_the_gradient_sums(monkeypatch):
    """With CUDA graphs each micro-batch starts a new step and accumulates into a .grad of its own memory,
    allocated before the call; the sums are bit for bit those of accumulating from grad = None."""
    import torch

    from cram_core.train import accumulate_gradients, build_parts, new_cuda_graph_step

    marks = _count_marks(monkeypatch)
    cfg = apply_overrides(get_preset("tiny"), ["impl.threads=1", "impl.device=cpu", "impl.compile=off"])
    batches = list(torch.randint(5, 2048, (3, 8, 64), generator=torch.Generator().manual_seed(0)))
    plain, graphed = build_parts(cfg, 2048), build_parts(cfg, 2048)
    graphed.cuda_graphs = True  # what build_parts sets on CUDA in reduce-overhead; the bookkeeping runs anywhere
    loss_plain, loss_graphed = accumulate_gradients(plain, batches), accumulate_gradients(graphed, batches)
    assert len(marks) == len(batches)
    assert torch.equal(loss_graphed, loss_plain)
    for (name, p), q in zip(plain.model.named_parameters(), graphed.model.parameters()):
        assert torch.equal(q.grad, p.grad), name
    graphed.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # an eval-style call needs no gradient buffers
        new_cuda_graph_step(graphed)
    assert all(p.grad is None for p in graphed.model.parameters())
    new_cuda_graph_step(graphed)
    assert all(p.grad is not None and not p.grad.any() for p in graphed.model.parameters())
    assert len(marks) == len(batches) + 2


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("wrapper", ["none", "sam"])
def test_reduce_overhead_trains_like_the_default_mode(tmp_path, wrapper):
    """Regression: compile_mode=reduce-overhead crashed in warm_up's second backward ("accessing tensor output
    of CUDAGraphs that has been overwritten"). Here with 4 micro-batches a step, two curriculum lengths and
    SAM's second pass, all of which accumulate gradients over several replays."""
    import torch
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_trees import get_manager

    runs = {}
    for mode in ("default", "reduce-overhead"):
        torch.compiler.reset()  # fresh compiled code and CUDA-graph trees for each mode
        counters.clear()
        runs[mode] = run(tmp_path, "impl.device=cuda", f"impl.compile_mode={mode}", f"optim.wrapper={wrapper}",
                         "train.batch_size=32", "train.micro_batch_size=8", "train.seq_len_curriculum=32:0.3",
                         "budget.tokens=200000", "train.log_every=5", name=mode)
        summary = runs[mode][0]
        assert summary["status"] == "completed", summary["reason"]
    manager = get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert counters["inductor"]["cudagraph_skips"] == 0 and manager is not None and manager.roots  # graphs ran
    curves = {mode: [m["loss"] for m in read_metrics(out)] for mode, (_, out) in runs.items()}
    assert len(curves["reduce-overhead"]) == len(curves["default"]) > 5
    assert curves["reduce-overhead"] == pytest.approx(curves["default"], abs=0.02)
    assert runs["reduce-overhead"][0]["eval_loss"] == pytest.approx(runs["default"][0]["eval_loss"], abs=0.02)
