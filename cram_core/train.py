"""The fixed-budget training loop and its CLI: ``python -m cram_core.train --preset tiny budget.seconds=60``.

Order of events: prepare data -> build model, objective, optimizer -> compile + warm up every shape the
run will use (clock stopped; weights untouched, RNGs reset afterwards) -> train until the budget clock says
p = 1 (LR, batch ramp and curriculum read only p) -> evaluate on held-out sequences (clock stopped).
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cram_core import checkpoint as ckpt
from cram_core import distributed, hardware, rng
from cram_core.averaging import WeightAverager
from cram_core.budget import BudgetClock
from cram_core.cli import OneLineParser, run_main
from cram_core.config import ConfigError, ObjectiveConfig, RunConfig, apply_overrides, list_flags
from cram_core.model import build_model, training_flops_per_sequence
from cram_core.objective import MLMObjective
from cram_core.optim import build_optimizer, clip_grad_norm
from cram_core.schedules import batch_size_at, lr_factor, seq_len_at

MetricsCallback = Callable[[dict[str, Any]], None]
EVAL_MASK_SEED = 20221229  # every trial is evaluated on the same held-out masks
EVAL_OBJECTIVE = ObjectiveConfig(mask_rate=0.15, split_80_10_10=True, loss="cross-entropy")
UNIFORM_MARGIN_NATS = 1.0
"a loss more than this above ln V (uniform guessing: perplexity e times worse than knowing nothing) diverged"
LATE_RISE_FACTOR = 1.25
"a late train loss (last 10% of steps) above this multiple of the first logged one diverged"
AT_MOST_CROSS_ENTROPY = ("cross-entropy", "focal")
"train losses that ln V bounds like the held-out loss (focal <= cross-entropy); others have their own scale"


@dataclass
class Parts:
    """Everything a training step touches; built once by `build_parts`, shared with `bench`."""

    cfg: RunConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module
    step_loss: Callable[..., torch.Tensor]  # (input_ids, positions, position_ids, targets) -> loss; maybe compiled
    compiled: bool
    objective: MLMObjective
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    scaler: torch.amp.GradScaler  # loss scaling for fp16 autocast; a pass-through otherwise
    vocab_size: int
    flops_cache: dict[int, float] = field(default_factory=dict)
    ranks: distributed.Ranks = distributed.SINGLE  # data-parallel ranks sharing each optimizer step
    cuda_graphs: bool = False  # step_loss replays CUDA graphs (see `new_cuda_graph_step`)

    def flops_per_sequence(self, seq_len: int) -> float:
        """One forward + backward of one sequence cut at ``seq_len``: the model runs on its kept positions."""
        if seq_len not in self.flops_cache:
            m, kept = self.objective.num_predictions(seq_len), self.objective.input_length(seq_len)
            self.flops_cache[seq_len] = training_flops_per_sequence(self.cfg.model, self.vocab_size, kept, m)
        return self.flops_cache[seq_len]

    def step_work(self, batch_size: int, seq_len: int) -> tuple[int, float]:
        """(tokens, FLOPs) one optimizer step computes on ``batch_size`` loader sequences at length ``seq_len``.

        A budget token is one input position through one forward + backward pass: under token dropping only
        the kept positions count, a curriculum length that doesn't divide data.seq_len counts only the rows
        `reshape_for_length` keeps, and SAM's second pass over the same batch counts again.
        """
        rows = batch_size * (self.cfg.data.seq_len // seq_len)  # seq_len <= data.seq_len (RunConfig checks)
        passes = 2 if self.optimizer.needs_closure else 1
        return (passes * rows * self.objective.input_length(seq_len),
                passes * rows * self.flops_per_sequence(seq_len))


def build_parts(cfg: RunConfig, vocab_size: int, ranks: distributed.Ranks = distributed.SINGLE) -> Parts:
    device = hardware.resolve_device(cfg.impl)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    seed = cfg.train.seed
    # one stream per purpose (cram_core.rng): same seed => same init, masks and dropout across variants
    model = build_model(cfg.model, vocab_size, seed).to(device)
    torch.manual_seed(rng.stream_seed(seed, "dropout"))  # torch's global stream: dropout, layer drop
    ranks.seed_dropout(seed)
    model = hardware.apply_precision(model, cfg.impl, device)  # fp8: swaps the linears, keeps the parameters
    fused = cfg.impl.fused_optimizer and device.type == "cuda"
    optimizer = build_optimizer(cfg.optim, model, fused=fused)
    objective = MLMObjective(cfg.objective, vocab_size)
    amp_dtype = hardware.resolve_dtype(cfg.impl, device)
    step_loss = _loss_function(model, objective, device, amp_dtype)
    compiled = hardware.should_compile(cfg.impl, device)
    if compiled:
        # The loss is compiled with the model so that the fp32 upcast of the [N,V] logits and the
        # cross-entropy fuse into a few kernels instead of materialising [N,V] fp32 tensors.
        step_loss = torch.compile(step_loss, mode=None if cfg.impl.compile_mode == "default" else cfg.impl.compile_mode)
    generator = rng.generator(seed, "masks", device)
    return Parts(
        cfg=cfg,
        device=device,
        amp_dtype=amp_dtype,
        model=model,
        step_loss=step_loss,
        compiled=compiled,
        objective=objective,
        optimizer=optimizer,
        generator=generator,
        scaler=hardware.grad_scaler(hardware.resolve_dtype(cfg.impl, device), device),
        vocab_size=vocab_size,
        ranks=ranks,
        cuda_graphs=uses_cuda_graphs(cfg.impl.compile_mode, device, compiled),
    )


def uses_cuda_graphs(compile_mode: str, device: torch.device, compiled: bool) -> bool:
    """Whether a step_loss compiled in ``compile_mode`` runs as CUDA graphs: on CUDA, in the modes that turn on
    inductor's ``triton.cudagraphs`` (reduce-overhead and max-autotune)."""
    from torch._inductor import list_mode_options  # what each mode sets, as torch.compile's docs point to

    return compiled and device.type == "cuda" and bool(list_mode_options(compile_mode).get("triton.cudagraphs"))


def new_cuda_graph_step(parts: Parts) -> None:
    """Before each call of a step_loss that replays CUDA graphs: start a new CUDA-graph step, and give every
    trainable parameter a ``.grad`` of its own memory. A no-op otherwise.

    The outputs of one replay live in the graphs' memory pool and the next step's replay overwrites them;
    reading one afterwards raises "accessing tensor output of CUDAGraphs that has been overwritten by a
    subsequent run". The loss is read within its own step (`accumulate_gradients` adds ``loss.detach() *
    scale``, a new tensor, to the step's total: `pending` holds those). But autograd keeps a backward's
    gradient output itself as ``.grad`` where ``.grad`` is None, and the next micro-batch, warm-up pass or
    SAM pass then adds to overwritten memory. A zero ``.grad`` made here is added to in place instead: the
    same sums, as every parameter gets a gradient in every step. One flat buffer per dtype (views as the
    grads) keeps that to one fill kernel, in the mode meant to save launches.
    """
    if not parts.cuda_graphs:
        return
    torch.compiler.cudagraph_mark_step_begin()
    if not torch.is_grad_enabled():
        return
    missing = [p for p in parts.model.parameters() if p.requires_grad and p.grad is None]
    for dtype in dict.fromkeys(p.dtype for p in missing):
        group = [p for p in missing if p.dtype == dtype]
        flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=parts.device)
        for p, grad in zip(group, flat.split([p.numel() for p in group])):
            p.grad = grad.view_as(p)


def reshape_for_length(batch: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A curriculum stage keeps tokens per micro-batch fixed: [B, L] -> [B*L/l, l] (truncating if l ∤ L)."""
    full = batch.shape[1]
    if seq_len >= full:
        return batch
    usable = (full // seq_len) * seq_len
    return batch[:, :usable].reshape(-1, seq_len)


def forward_loss(parts: Parts, tokens: torch.Tensor, objective: MLMObjective, generator: torch.Generator,
                 model: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    masked = objective.mask(tokens, generator)
    if model is None and objective is parts.objective:
        loss_fn = parts.step_loss
        new_cuda_graph_step(parts)
    else:
        loss_fn = _loss_function(model or parts.model, objective, parts.device, parts.amp_dtype)
    return loss_fn(masked.input_ids, masked.positions, masked.position_ids, masked.targets)


def _loss_function(model: Callable[..., torch.Tensor], objective: MLMObjective, device: torch.device,
                   amp_dtype: torch.dtype | None) -> Callable[..., torch.Tensor]:
    def loss_fn(input_ids: torch.Tensor, positions: torch.Tensor, position_ids: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(input_ids, positions, position_ids)
        return objective.loss(logits, targets)

    return loss_fn


def accumulate_gradients(parts: Parts, micro_batches: list[torch.Tensor]) -> torch.Tensor:
    """Forward/backward over the micro-batches of one optimizer step; returns the mean loss (on device)."""
    total = torch.zeros((), device=parts.device)
    scale = 1.0 / len(micro_batches)
    for index, batch in enumerate(micro_batches):
        if not parts.ranks.owns(index):  # another rank's: draw its masks anyway, so the stream stays shared
            parts.objective.mask(batch, parts.generator)
            continue
        loss = forward_loss(parts, batch, parts.objective, parts.generator)
        parts.scaler.scale(loss * scale).backward()
        total += loss.detach() * scale
    return parts.ranks.reduce_gradients(parts.model, total)


def optimizer_step(parts: Parts, micro_batches: list[torch.Tensor], lr: float) -> torch.Tensor:
    """One optimizer step at learning rate ``lr``; SAM re-runs the same (masked) micro-batches in its closure."""
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if getattr(parts.optimizer, "needs_closure", False):
        rng = parts.generator.get_state()
        loss = accumulate_gradients(parts, micro_batches)

        def closure() -> torch.Tensor:
            parts.generator.set_state(rng)  # same masks for the perturbed pass
            parts.optimizer.zero_grad(set_to_none=True)
            perturbed = accumulate_gradients(parts, micro_batches)
            clip_grad_norm(parts.model, parts.cfg.optim.grad_clip)  # the base step uses these gradients
            return perturbed

        clip_grad_norm(parts.model, parts.cfg.optim.grad_clip)
        parts.optimizer.step(closure)
    else:  # fp16: RunConfig refuses SAM, since GradScaler can't step a closure
        loss = accumulate_gradients(parts, micro_batches)
        parts.scaler.unscale_(parts.optimizer)  # clipping (and LARS) see the true gradients
        clip_grad_norm(parts.model, parts.cfg.optim.grad_clip)
        parts.scaler.step(parts.optimizer)  # skipped when a gradient overflowed; the scale then backs off
        parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    return loss


def warm_up(parts: Parts, sample: torch.Tensor) -> float:
    """Compile and run every shape the run will see, without changing weights; returns seconds spent."""
    start = time.perf_counter()
    lengths = {parts.cfg.data.seq_len} | {n for n, _ in parts.cfg.train.curriculum()}
    rng_cpu = torch.get_rng_state()
    rng_gen = parts.generator.get_state()
    passes = 2 if parts.compiled else 1
    for length in sorted(lengths):
        for _ in range(passes):
            loss = forward_loss(parts, reshape_for_length(sample, length), parts.objective, parts.generator)
            loss.backward()
    parts.optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(rng_cpu)
    parts.generator.set_state(rng_gen)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
        torch.cuda.reset_peak_memory_stats(parts.device)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(parts: Parts, tokens: np.ndarray, indices: np.ndarray, state: dict[str, torch.Tensor] | None) -> float:
    """Held-out MLM loss at a fixed 15% masking, identical masks for every trial; `state` = averaged weights."""
    if len(indices) == 0:
        return float("nan")
    model = parts.model
    saved = None
    if state is not None:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    objective = MLMObjective(EVAL_OBJECTIVE, parts.vocab_size)
    generator = torch.Generator(device=parts.device).manual_seed(EVAL_MASK_SEED)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    micro = parts.cfg.train.micro_batch_size
    for index, start in enumerate(range(0, len(indices), micro)):
        batch = torch.from_numpy(tokens[indices[start : start + micro]].astype(np.int64)).to(parts.device)
        if not parts.ranks.owns(index):  # another rank's batch: its masks only, so every batch keeps its own
            objective.mask(batch, generator)
            continue
        loss = forward_loss(parts, batch, objective, generator, model=model)
        total += float(loss) * len(batch)
        count += len(batch)
    total, count = parts.ranks.sum_floats(total, count)
    model.train(was_training)
    if saved is not None:
        model.load_state_dict(saved)
    return total / count


def _late(losses: list[float]) -> list[float]:
    """The per-step losses of the last 10% of steps (at least one): what `final_loss` averages."""
    return losses[-max(1, len(losses) // 10):] if losses else []


def blow_up_reason(losses: list[float], log_every: int, eval_loss: float, vocab_size: int, *,
                   train_at_most_ce: bool) -> str | None:
    """Why a run whose losses stayed finite still diverged, or None.

    The held-out loss is cross-entropy whatever the train objective, so ln V + UNIFORM_MARGIN_NATS bounds it;
    so does the train loss when ``train_at_most_ce``. Any train loss must also end below LATE_RISE_FACTOR
    times its first logged value (the mean over the first ``log_every`` steps, near init).
    """
    limit = math.log(vocab_size) + UNIFORM_MARGIN_NATS
    uniform = f"ln V + {UNIFORM_MARGIN_NATS:g} = {limit:.2f} (uniform guessing over {vocab_size} tokens)"
    if math.isfinite(eval_loss) and eval_loss > limit:
        return f"held-out loss {eval_loss:.2f} > {uniform}"
    if not losses:
        return None
    late, first = float(np.mean(_late(losses))), float(np.mean(losses[:log_every]))
    if train_at_most_ce and late > limit:
        return f"late train loss {late:.2f} > {uniform}"
    if first > 0 and late > LATE_RISE_FACTOR * first:
        return f"late train loss {late:.2f} > {LATE_RISE_FACTOR:g} x its first logged value {first:.2f}"
    return None


def split_indices(num_sequences: int, num_eval: int) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced held-out sequences (ordering-agnostic); the rest, in order, for training."""
    num_eval = min(num_eval, num_sequences // 10)
    eval_idx = np.unique(np.linspace(0, num_sequences - 1, num_eval).astype(np.int64)) if num_eval else np.zeros(0, np.int64)
    mask = np.ones(num_sequences, dtype=bool)
    mask[eval_idx] = False
    return np.nonzero(mask)[0], eval_idx


def mark_indices(eval_idx: np.ndarray, num_marks: int) -> np.ndarray:
    """The held-out sequences the eval marks read: ``num_marks`` of the final eval's, evenly spaced so they
    span every part of the data the final eval does; all of them (in order) when ``num_marks`` >= their count."""
    if num_marks >= len(eval_idx):
        return eval_idx
    return eval_idx[np.linspace(0, len(eval_idx) - 1, num_marks).astype(np.int64)]


class Logger:
    """Turns the step stream into one metrics record per log step: console line, metrics.jsonl, callback."""

    def __init__(self, parts: Parts, out_dir: Path | None, callback: MetricsCallback | None, console: Any):
        self.parts = parts
        self.callback = callback
        self.console = console
        self.file = open(out_dir / "metrics.jsonl", "a") if out_dir else None
        self.peak = parts.ranks.peak_flops(hardware.peak_flops(parts.device))
        self.last = (0.0, 0, 0.0)  # seconds, tokens, flops at the previous record

    def record(self, step: int, clock: BudgetClock, loss: float, lr: float, batch_size: int, seq_len: int,
               held_out: float | None = None) -> dict:
        seconds, tokens, flops = clock.seconds, clock.tokens, clock.flops
        window = max(seconds - self.last[0], 1e-9)
        rec = {
            "step": step, "progress": clock.progress, "tokens": tokens, "seconds": seconds, "flops": flops,
            "loss": loss, "lr": lr, "batch_size": batch_size, "seq_len": seq_len,
            "tokens_per_second": (tokens - self.last[1]) / window,
            "mfu": (flops - self.last[2]) / window / self.peak if self.peak else None,
            "memory_gb": torch.cuda.max_memory_allocated(self.parts.device) / 2**30
            if self.parts.device.type == "cuda" else None,
        }
        if held_out is not None:  # only on records at an eval mark (see `train(eval_marks=...)`)
            rec["eval_loss"] = held_out
        self.last = (seconds, tokens, flops)
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.callback:
            self.callback(rec)
        if self.console:
            mfu = f" mfu {rec['mfu']:.1%}" if rec["mfu"] is not None else ""
            mem = f" mem {rec['memory_gb']:.1f}G" if rec["memory_gb"] is not None else ""
            p = rec["progress"]
            eta = f" eta {seconds * (1 - p) / p:.0f}s" if p > 0 else ""
            self.console.print(
                f"step {step:>6} p {p:.3f} loss {loss:.4f} lr {lr:.2e} bs {batch_size} "
                f"len {seq_len} tok {tokens:.3g} tok/s {rec['tokens_per_second']:,.0f}{mfu}{mem}{eta}",
                soft_wrap=True,  # one record, one line, whatever the terminal width
            )
        return rec

    def close(self) -> None:
        if self.file:
            self.file.close()


def train(cfg: RunConfig, **kwargs: Any) -> dict[str, Any]:
    """Train ``cfg`` to its budget (see `_train` for the arguments); under torchrun, or beside
    `distributed.beside_ranks`, as one data-parallel rank: only rank 0 writes and calls back."""
    with distributed.joined(hardware.resolve_device(cfg.impl).type) as ranks:
        return _train(cfg, ranks=ranks, **kwargs)


def _train(
    cfg: RunConfig,
    *,
    ranks: distributed.Ranks,
    out_dir: str | Path | None = None,
    callback: MetricsCallback | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    prepared: Any = None,
    eval_marks: int = 0,
) -> dict[str, Any]:
    """Train ``cfg`` to its budget; returns the summary dict (also written to ``out_dir/summary.json``).

    ``eval_marks`` = N > 0 also measures the held-out loss (current weights, ``train.mark_sequences`` of the
    final eval's sequences, fixed masks) at the first log step past each p = k/N, k < N, with the clock paused
    (time in ``timings.marks_s``): for a token budget these are the same token marks in every trial. Each lands
    in that step's record as ``eval_loss`` and in the summary's ``eval_curve`` [(tokens, loss), ...], which ends
    with the final eval at p = 1 on all the eval sequences.
    """
    from cram_core.data import TrainLoader, prepare

    hardware.check_precision(cfg.impl, hardware.resolve_device(cfg.impl))  # before anything is prepared or written
    if not ranks.is_writer:  # rank 0 alone writes and reports
        out_dir, callback, progress = None, None, False
        ranks.barrier()  # rank 0 prepares the data first; the others then find it in the cache
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir else None
    prepared = prepared if prepared is not None else prepare(cfg.data, progress=progress)
    if ranks.is_writer:
        ranks.barrier()
    prepare_s = time.perf_counter() - t_start
    if out:  # only once the data is known to be good: a bad source leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:  # a resumed run appends to the curve it continues
            (out / "metrics.jsonl").unlink(missing_ok=True)

    parts = build_parts(cfg, prepared.vocab_size, ranks)
    tokens = prepared.tokens
    train_idx, eval_idx = split_indices(len(tokens), cfg.train.eval_sequences)
    mark_idx = mark_indices(eval_idx, cfg.train.mark_sequences)  # the same in every trial: marks stay paired
    micro = cfg.train.micro_batch_size
    if len(train_idx) < micro:
        raise ConfigError(
            f"only {len(train_idx)} training sequences, fewer than train.micro_batch_size={micro}; "
            "use more data or a smaller micro-batch"
        )
    loader = TrainLoader(tokens, train_idx, micro, parts.device)
    clock = distributed.budget_clock(cfg.budget, ranks)  # seconds agreed over ranks
    averager = WeightAverager(cfg.train, parts.model)
    sample = torch.from_numpy(tokens[train_idx[:micro]].astype(np.int64)).to(parts.device)
    compile_s = warm_up(parts, sample)

    step, losses = 0, []
    if resume is not None:
        step, losses = ckpt.load_training_state(Path(resume), parts, loader, clock, averager)

    console = _console() if progress else None
    logger = Logger(parts, out, callback, console)
    status, reason = "completed", None
    # every rank takes part in a checkpoint (rank 0 saves their dropout streams), if rank 0 writes one
    next_ckpt = _next_checkpoint(cfg.train.checkpoint_every, clock.progress) if ranks.rank0_says(out is not None) \
        else None
    next_mark = _next_checkpoint(1.0 / eval_marks, clock.progress) if eval_marks > 0 else None
    eval_curve: list[tuple[float, float]] = []
    marks_s = 0.0
    pending: list[torch.Tensor] = []
    clock.start()
    try:
        while not clock.done:
            p = clock.progress
            lr = cfg.optim.lr * lr_factor(cfg.train, p)
            batch_size = batch_size_at(cfg.train, p)
            seq_len = seq_len_at(cfg.train, p, cfg.data.seq_len)
            micro_batches = [reshape_for_length(loader.next(), seq_len) for _ in range(batch_size // micro)]
            pending.append(optimizer_step(parts, micro_batches, lr))
            step += 1
            clock.add(*parts.step_work(batch_size, seq_len))
            averager.update(parts.model, step, clock.progress)
            if step % cfg.train.log_every == 0 or clock.done:
                window = torch.stack(pending).float().cpu()
                pending.clear()
                bad = (~torch.isfinite(window)).nonzero()
                if len(bad):
                    status = "diverged"
                    reason = f"non-finite loss at step {step - len(window) + int(bad[0]) + 1}"
                    break
                losses.extend(window.tolist())
                held_out = None
                if next_mark is not None and clock.progress >= next_mark and not clock.done:
                    t_mark = time.perf_counter()
                    with clock.paused():
                        held_out = evaluate(parts, tokens, mark_idx, None)
                    marks_s += time.perf_counter() - t_mark
                    eval_curve.append((clock.tokens, held_out))
                    next_mark = _next_checkpoint(1.0 / eval_marks, clock.progress)
                logger.record(step, clock, float(window.mean()), lr, batch_size, seq_len, held_out)
            if next_ckpt is not None and clock.progress >= next_ckpt and not clock.done:
                with clock.paused():
                    dropout_states = ranks.dropout_states()
                    if out:
                        ckpt.save_training_state(out / "checkpoints" / f"step-{step:07d}", parts, loader, clock,
                                                 averager, step, losses, prepared, dropout_states)
                next_ckpt = _next_checkpoint(cfg.train.checkpoint_every, clock.progress)
    finally:
        logger.close()
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    clock.stop()  # evaluation and saving below are outside the budget and out of `seconds`
    train_s = clock.seconds

    t_eval = time.perf_counter()
    eval_loss = float("nan")
    if status == "completed":
        eval_loss = evaluate(parts, tokens, eval_idx, averager.averaged_state_dict())
        if not math.isfinite(eval_loss) and len(eval_idx):
            status, reason = "diverged", "non-finite held-out loss"
        elif (reason := blow_up_reason(losses, cfg.train.log_every, eval_loss, parts.vocab_size,
                                       train_at_most_ce=cfg.objective.loss in AT_MOST_CROSS_ENTROPY)):
            status = "diverged"
    eval_s = time.perf_counter() - t_eval

    tail = _late(losses)
    peak = ranks.peak_flops(hardware.peak_flops(parts.device))
    summary = {
        "status": status,
        "reason": reason,
        "final_loss": float(np.mean(tail)) if tail else None,
        "eval_loss": eval_loss if math.isfinite(eval_loss) else None,
        "eval_curve": eval_curve + ([(clock.tokens, eval_loss)] if math.isfinite(eval_loss) else []),
        "tokens": clock.tokens,
        "seconds": train_s,
        "flops": clock.flops,
        "steps": step,
        "tokens_per_second": clock.tokens / max(train_s, 1e-9),
        "mfu": clock.flops / max(train_s, 1e-9) / peak if peak else None,
        "params": parts.model.num_params(),
        "memory_gb": torch.cuda.max_memory_allocated(parts.device) / 2**30 if parts.device.type == "cuda" else None,
        "timings": {"prepare_s": prepare_s, "compile_s": compile_s, "train_s": train_s, "eval_s": eval_s,
                    "marks_s": marks_s},
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "seed": cfg.train.seed,
        "hardware": hardware.device_name(parts.device) if ranks.world == 1 else
        f"{ranks.world} x {hardware.device_name(parts.device)}",
        "ranks": ranks.world,
        "host": socket.gethostname(),
        "versions": hardware.versions(),
        "budget": {"kind": cfg.budget.kind, "amount": cfg.budget.amount},
        "data": {"path": str(prepared.path), "vocab_size": prepared.vocab_size, "train_sequences": len(train_idx),
                 "eval_sequences": len(eval_idx), "mark_sequences": len(mark_idx) if eval_marks > 0 else 0},
    }
    if out:
        ckpt.save_model(out, parts.model, cfg, prepared, averager.averaged_state_dict())
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _next_checkpoint(every: float, p: float) -> float | None:
    if every <= 0:
        return None
    return (math.floor(p / every + 1e-9) + 1) * every


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False, highlight=False)


# ---------------------------------------------------------------------------------------------- CLI


def default_preset() -> str:
    return "crammed-bert-short" if torch.cuda.is_available() else "tiny"


def parse_config(preset: str | None, overrides: list[str]) -> RunConfig:
    from cram_core.presets import get_preset

    return apply_overrides(get_preset(preset or default_preset()), overrides)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m cram_core.train",
        description="Train a crammed BERT under a fixed budget. Overrides are group.field=value (see --list-flags).",
    )
    parser.add_argument("overrides", nargs="*", help="group.field=value, e.g. model.norm_scheme=post budget.tokens=5e6")
    parser.add_argument("--preset", default=None, help="tiny | small | crammed-bert | crammed-bert-short | bert-base "
                        "(default: tiny on CPU, crammed-bert-short on CUDA)")
    parser.add_argument("--out", default=None, help="write metrics.jsonl, summary.json, model + tokenizer here "
                        "(default: nothing written but the printed summary)")
    parser.add_argument("--resume", default=None, help="checkpoint folder to continue from (default: start fresh)")
    parser.add_argument("--list-flags", action="store_true", help="print every flag with type, default and meaning "
                        "(defaults: the --preset's when given, else the crammed-bert recipe's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    # intermixed: overrides may come before, between and after the options (`--quiet budget.tokens=1e6`)
    args, extras = parser.parse_known_intermixed_args(argv)
    if extras:
        parser.parse_args(extras)  # the shared one-line error, naming the nearest option
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        if args.list_flags:  # with --preset, the defaults shown are that preset's
            print("\n".join(list_flags(parse_config(args.preset, []) if args.preset else None)))
            return 0
        cfg = parse_config(args.preset, args.overrides)
        if args.resume:  # other flags than the checkpoint's: one line, before any data or --out is touched
            ckpt.check_resumable(Path(args.resume), cfg)
        summary = train(cfg, out_dir=args.out, resume=args.resume, progress=not args.quiet)
    except ConfigError as e:
        return parser.fail(e)
    if distributed.launched_rank() == 0:  # under torchrun, rank 0 speaks for the run
        _print_summary(summary, args.out)
    return 0 if summary["status"] == "completed" else 1


def _print_summary(s: dict[str, Any], out: str | None) -> None:
    t = s["timings"]
    mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a (CPU or unknown GPU)"
    lines = [
        f"status        {s['status']}" + (f" ({s['reason']})" if s["reason"] else ""),
        f"final loss    {s['final_loss']:.4f} (train, last 10% of steps)" if s["final_loss"] is not None else "final loss    n/a",
        f"eval loss     {s['eval_loss']:.4f} (held-out, 15% masking)" if s["eval_loss"] is not None else "eval loss     n/a",
        f"steps         {s['steps']}   tokens {s['tokens']:.4g}   flops {s['flops']:.3g}",
        f"throughput    {s['tokens_per_second']:,.0f} tokens/s   MFU {mfu}",
        f"time          train {t['train_s']:.1f}s  (outside budget: prepare {t['prepare_s']:.1f}s, "
        f"compile/warm-up {t['compile_s']:.1f}s, eval {t['eval_s']:.1f}s)",
        f"model         {s['params'] / 1e6:.2f}M parameters on {s['hardware']}",
    ]
    if out:
        lines.append(f"written       {out}/metrics.jsonl, {out}/summary.json, {out}/model.safetensors")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
