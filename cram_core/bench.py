"""Throughput benchmark: ``python -m cram_core.bench --preset crammed-bert``.

Times the real training step (masking, forward, backward, clipping, optimizer) of a preset on random
tokens, after compilation and warm-up, and prints tokens/s, MFU against the datasheet peak, utilisation
against a measured matmul rate, and peak memory. ``--reference hf`` times Hugging Face
``BertForMaskedLM`` (bert-base shape, bf16, SDPA, fused AdamW, compiled) on the same inputs for comparison.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from cram_core import hardware
from cram_core.cli import OneLineParser, run_main
from cram_core.config import ConfigError
from cram_core.train import build_parts, default_preset, optimizer_step, parse_config, warm_up


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preset(preset: str | None, overrides: list[str], steps: int, vocab_size: int) -> dict[str, Any]:
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
    }


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
    }


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m cram_core.bench", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="group.field=value overrides (e.g. train.micro_batch_size=512)")
    parser.add_argument("--preset", default=None, help="preset to time (default: tiny on CPU, crammed-bert-short on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 10 on CPU)")
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary (default: the preset's data.vocab_size)")
    parser.add_argument("--reference", choices=["none", "hf"], default="none", help="also time HF BertForMaskedLM")
    args = parser.parse_args(argv)
    try:
        cfg = parse_config(args.preset, args.overrides)
    except ConfigError as e:
        return parser.fail(e)
    device = hardware.resolve_device(cfg.impl)
    steps = args.steps or (50 if device.type == "cuda" else 10)
    vocab = args.vocab_size or cfg.data.vocab_size
    rows = [bench_preset(args.preset, args.overrides, steps, vocab)]
    if args.reference == "hf":
        if device.type != "cuda":
            return parser.fail("--reference hf needs CUDA")
        rows.append(bench_hf_reference(steps, cfg.train.micro_batch_size, cfg.data.seq_len, vocab))
    peak = hardware.peak_flops(device)
    measured = hardware.measure_matmul_flops(device, rows[0]["dtype"])
    print(f"device: {hardware.device_name(device)}; precision {rows[0]['dtype'] or 'fp32'}; {steps} timed steps")
    print(f"matmul ceiling measured here: {measured / 1e12:.3g} TFLOP/s"
          + (f"; datasheet peak {peak / 1e12:.0f} TFLOP/s" if peak else "; no datasheet peak (MFU n/a)"))
    print(f"{'run':<52} {'params':>8} {'tokens/s':>12} {'TFLOP/s':>8} {'MFU':>6} {'of meas.':>8} {'mem GB':>7} {'compile s':>9}")
    for r in rows:
        fps = r["flops_per_second"]
        mfu = f"{fps / peak:.1%}" if fps and peak else "n/a"
        util = f"{fps / measured:.1%}" if fps else "n/a"
        tf = f"{fps / 1e12:.3g}" if fps else "n/a"
        mem = f"{r['memory_gb']:.1f}" if r["memory_gb"] is not None else "n/a"
        print(f"{r['name']:<52} {r['params'] / 1e6:>7.1f}M {r['tokens_per_second']:>12,.0f} {tf:>8} {mfu:>6} "
              f"{util:>8} {mem:>7} {r['compile_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    run_main(main)
