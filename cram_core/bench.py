"""Throughput benchmark: ``python -m cram_core.bench --preset crammed-bert``.

Times the real training step (masking, forward, loss, backward, clipping, optimizer) of a preset on random
tokens, after compilation and warm-up, and prints tokens/s, MFU against the datasheet peak, utilisation
against a measured matmul rate, peak memory and the compile time. ``--reference hf`` times Hugging Face
``BertForMaskedLM`` (bert-base shape, bf16, SDPA, fused AdamW, compiled) on the same inputs for comparison.

``--vary group.field=a,b`` adds one row per value (repeat it for every combination), e.g. to pick a
micro-batch by measurement or to set fp8 beside bf16; ``--profile`` prints where one step's time goes
(torch.profiler: device-busy share of the wall time, kernel groups, top kernels). Compile times are cold:
each run uses a fresh compiler cache unless ``--warm-cache`` is given.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections import defaultdict
from typing import Any, Iterator

import torch

from cram_core import hardware
from cram_core.cli import OneLineParser, run_main
from cram_core.config import ConfigError
from cram_core.train import Parts, build_parts, default_preset, optimizer_step, parse_config, warm_up


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preset(preset: str | None, overrides: list[str], steps: int, vocab_size: int,
                 profile: bool = False) -> dict[str, Any]:
    cfg = parse_config(preset, overrides)
    parts = build_parts(cfg, vocab_size)
    micro, seq_len = cfg.train.micro_batch_size, cfg.data.seq_len
    gen = torch.Generator(device=parts.device).manual_seed(0)
    batches = [torch.randint(5, vocab_size, (micro, seq_len), device=parts.device, generator=gen) for _ in range(4)]
    compile_s = warm_up(parts, batches[0])
    # one optimizer step as warm-up too: fused optimizer kernels and allocator settle
    optimizer_step(parts, batches[:1], cfg.optim.lr)
    _sync(parts.device)
    if parts.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(parts.device)
    start = time.perf_counter()
    for i in range(steps):
        optimizer_step(parts, [batches[i % len(batches)]], cfg.optim.lr)
    _sync(parts.device)
    seconds = time.perf_counter() - start
    step_tokens, step_flops = parts.step_work(micro, seq_len)  # as the budget counts them
    tokens, flops = steps * step_tokens, steps * step_flops
    return {
        "name": f"{preset or default_preset()} ({cfg.model.num_layers}x{cfg.model.hidden_size}, micro-batch {micro})",
        "device": parts.device,
        "dtype": parts.amp_dtype,
        "params": parts.model.num_params(),
        "compile_s": compile_s,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "flops_per_second": flops / seconds,
        "memory_gb": torch.cuda.max_memory_allocated(parts.device) / 2**30 if parts.device.type == "cuda" else None,
        "profile": profile_steps(parts, batches, 3) if profile else None,
    }


# ---------------------------------------------------------------- profile

# Kernel/op name fragments -> group, first match wins (lower-case). cuBLAS/CUTLASS Hopper matmuls are
# named nvjet*/sm90_*; fp8 ones go through _scaled_mm; Triton kernels are the compiler's fusions.
KERNEL_GROUPS: dict[str, tuple[str, ...]] = {
    "matmul": ("gemm", "nvjet", "cutlass", "sm90_xmma", "scaled_mm", "aten::mm", "aten::addmm", "aten::bmm",
               "aten::linear", "aten::matmul"),
    "attention": ("flash", "fmha", "attention", "cudnn"),
    "optimizer / foreach": ("adam", "multi_tensor", "foreach"),
    "compiler fusions (norm, GLU, loss)": ("triton",),
    "copies": ("memcpy", "memset", "copy"),
}


def kernel_group(name: str) -> str:
    lower = name.lower()
    for group, fragments in KERNEL_GROUPS.items():
        if any(f in lower for f in fragments):
            return group
    return "other"


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: time with at least one kernel running."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_steps(parts: Parts, batches: list[torch.Tensor], steps: int) -> list[str]:
    """One-line-per-finding summary of ``steps`` profiled training steps: device busy vs idle, groups, top kernels.

    On CUDA the device events are kernels (busy = the union of their intervals); on the CPU they are the
    top-level aten ops' self times, and busy/idle is not reported.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = parts.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    lr = parts.cfg.optim.lr
    with profile(activities=activities) as prof:
        _sync(parts.device)
        start = time.perf_counter()
        for i in range(steps):
            optimizer_step(parts, [batches[i % len(batches)]], lr)
        _sync(parts.device)
        wall_us = (time.perf_counter() - start) * 1e6
    if cuda:
        events = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                  if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        events = [(e.key, 0.0, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e - s for _, s, e in events) or 1.0
    per_name: dict[str, float] = defaultdict(float)
    per_group: dict[str, float] = defaultdict(float)
    for name, s, e in events:
        per_name[name] += e - s
        per_group[kernel_group(name)] += e - s
    ms = 1e-3 / steps  # microseconds summed over the steps -> ms per step
    head = f"profile: {steps} steps, {wall_us * ms:.2f} ms/step wall"
    if cuda:
        busy = busy_time([(s, e) for _, s, e in events])
        head += (f"; device busy {busy * ms:.2f} ms/step ({busy / wall_us:.1%} of wall, idle gaps "
                 f"{(wall_us - busy) * ms:.2f} ms); {len(events) // steps} kernels/step")
    lines = [head]
    lines += [f"  {g:<36} {t * ms:8.2f} ms/step {t / total:6.1%}" for g, t in sorted(per_group.items(), key=lambda x: -x[1])]
    lines.append("  top:")
    lines += [f"  {t * ms:8.2f} ms  {n[:100]}" for n, t in sorted(per_name.items(), key=lambda x: -x[1])[:12]]
    return lines


# ---------------------------------------------------------------- HF reference


def bench_hf_reference(steps: int, micro: int, seq_len: int, vocab_size: int) -> dict[str, Any]:
    """HF BertForMaskedLM, bert-base shape: the common baseline users compare against."""
    from transformers import BertConfig, BertForMaskedLM

    device = torch.device("cuda")
    config = BertConfig(vocab_size=vocab_size, attn_implementation="sdpa")
    model = BertForMaskedLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model)
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(5, vocab_size, (micro, seq_len), device=device, generator=gen)
    labels = torch.where(torch.rand(ids.shape, device=device, generator=gen) < 0.15, ids, -100)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    _sync(device)
    compile_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    n = sum(p.numel() for p in model.parameters())
    return {
        "name": f"HF BertForMaskedLM (12x768, micro-batch {micro})",
        "device": device, "dtype": torch.bfloat16, "params": n, "compile_s": compile_s, "seconds": seconds,
        "tokens_per_second": steps * micro * seq_len / seconds,
        "flops_per_second": None,
        "memory_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "profile": None,
    }


# ---------------------------------------------------------------- CLI


def variant_overrides(varies: list[str]) -> list[list[str]]:
    """``["a.b=1,2", "c.d=x,y"]`` -> one override list per combination: [[a.b=1, c.d=x], [a.b=1, c.d=y], ...]."""
    axes = []
    for vary in varies:
        key, sep, values = vary.partition("=")
        choices = [v for v in values.split(",") if v]
        if not sep or not key or not choices:
            raise ConfigError(f"--vary {vary!r}: expected group.field=value1,value2,...")
        axes.append([f"{key}={v}" for v in choices])
    return [list(combo) for combo in itertools.product(*axes)]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m cram_core.bench", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="group.field=value overrides (e.g. train.micro_batch_size=512)")
    parser.add_argument("--preset", default=None, help="preset to time (default: tiny on CPU, crammed-bert-short on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 10 on CPU)")
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary (default: the preset's data.vocab_size)")
    parser.add_argument("--reference", choices=["none", "hf"], default="none", help="also time HF BertForMaskedLM")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="one row per value, e.g. impl.precision=bf16,fp8 (repeat for every combination)")
    parser.add_argument("--profile", action="store_true", help="profile 3 steps of each row: where the time goes")
    parser.add_argument("--warm-cache", action="store_true", help="reuse the compiler's on-disk cache (compile "
                        "times are then not cold)")
    args = parser.parse_args(argv)
    try:
        variants = [args.overrides + extra for extra in variant_overrides(args.vary)]
        cfgs = [parse_config(args.preset, overrides) for overrides in variants]
        cfg = cfgs[0]
        device = hardware.resolve_device(cfg.impl)
        for c in cfgs:
            hardware.check_precision(c.impl, device)
        if args.reference == "hf" and device.type != "cuda":
            raise ConfigError("--reference hf needs CUDA")
    except (ConfigError, RuntimeError) as e:
        return parser.fail(e)
    steps = args.steps or (50 if device.type == "cuda" else 10)
    vocab = args.vocab_size or cfg.data.vocab_size
    rows = []
    with contextlib.nullcontext() if args.warm_cache else cold_compile_cache():
        for overrides, extra in zip(variants, variant_overrides(args.vary)):
            row = bench_preset(args.preset, overrides, steps, vocab, profile=args.profile)
            row["name"] += "".join(f" {e}" for e in extra)
            rows.append(row)
        if args.reference == "hf":
            rows.append(bench_hf_reference(steps, cfg.train.micro_batch_size, cfg.data.seq_len, vocab))
    _print_rows(rows, device, steps)
    return 0


@contextlib.contextmanager
def cold_compile_cache() -> Iterator[str]:
    """Point inductor's and Triton's on-disk caches at a fresh folder (removed afterwards), so that the
    compile times measured inside are cold; both read these variables when they compile."""
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    with tempfile.TemporaryDirectory(prefix="cram-bench-compile-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
        try:
            yield folder
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _print_rows(rows: list[dict[str, Any]], device: torch.device, steps: int) -> None:
    peak = hardware.peak_flops(device)
    measured = hardware.measure_matmul_flops(device, rows[0]["dtype"])
    print(f"device: {hardware.device_name(device)}; precision {rows[0]['dtype'] or 'fp32'}; {steps} timed steps")
    print(f"matmul ceiling measured here: {measured / 1e12:.3g} TFLOP/s"
          + (f"; datasheet peak {peak / 1e12:.0f} TFLOP/s" if peak else "; no datasheet peak (MFU n/a)"))
    width = max(52, *(len(r["name"]) for r in rows))
    print(f"{'run':<{width}} {'params':>8} {'tokens/s':>12} {'TFLOP/s':>8} {'MFU':>6} {'of meas.':>8} {'mem GB':>7} "
          f"{'compile s':>9}")
    for r in rows:
        fps = r["flops_per_second"]
        mfu = f"{fps / peak:.1%}" if fps and peak else "n/a"
        util = f"{fps / measured:.1%}" if fps else "n/a"
        tf = f"{fps / 1e12:.3g}" if fps else "n/a"
        mem = f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "n/a"
        print(f"{r['name']:<{width}} {r['params'] / 1e6:>7.1f}M {r['tokens_per_second']:>12,.0f} {tf:>8} {mfu:>6} "
              f"{util:>8} {mem:>7} {r['compile_s']:>9.1f}")
    for r in rows:
        if r["profile"]:
            print(f"{r['name']}:")
            print("\n".join(r["profile"]))


if __name__ == "__main__":
    run_main(main)
