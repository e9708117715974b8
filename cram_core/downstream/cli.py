"""``python -m cram_core.downstream``: fine-tune a run on eval tasks and print the dev scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from cram_core.cli import OneLineParser, positive_int
from cram_core.downstream.classifier import WEIGHT_FILES
from cram_core.downstream.errors import DownstreamError
from cram_core.downstream.finetune import evaluate_run, summarize
from cram_core.downstream.tasks import DATA_ROOT_ENV, DEFAULT_DATA_ROOT


def _format_table(results: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    width = max([len("task")] + [len(r["task"]) for r in results])
    lines = [f"{'task':<{width}}  {'metric':<13} {'seed':>6} {'value':>8} {'train':>7} {'dev':>6} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r['task']:<{width}}  {r['metric']:<13} {r['seed']:>6} {r['value']:>8.4f} "
                     f"{r['n_train']:>7} {r['n_dev']:>6} {r['seconds']:>8.1f}")
    for name, entry in summary.items():
        if len(entry["values"]) > 1:
            lines.append(f"{name:<{width}}  {entry['metric']:<13} {'median':>6} {entry['median']:>8.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from cram_core.downstream import bench

        return bench.main(argv[1:])
    parser = OneLineParser(
        prog="python -m cram_core.downstream",
        description="Fine-tune a finished training run on eval tasks (GLUE-sane protocol) and print dev scores. "
                    "'python -m cram_core.downstream bench RUN_DIR' times it instead (a run dir named bench: "
                    "./bench).",
    )
    parser.add_argument("run_dir", help="a training run's --out directory (model.safetensors, config.json, tokenizer.json)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names, e.g. rt-polarity,sva")
    parser.add_argument("--seeds", type=positive_int, default=1, help="fine-tuning seeds 0..N-1 (paper: 5, median)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="fine-tuning epochs per task and seed")
    parser.add_argument("--max-train", type=positive_int, default=None, help="cap train examples (seeded subset; default: all)")
    parser.add_argument("--max-dev", type=positive_int, default=None, help="cap dev examples (seeded subset; default: all)")
    parser.add_argument("--data-root", default=None,
                        help=f"folder of <task>/task.json (default ${DATA_ROOT_ENV} or {DEFAULT_DATA_ROOT})")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="fine-tuning batch size")
    parser.add_argument("--lr", type=float, default=4e-5, help="peak fine-tuning learning rate")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else CPU")
    parser.add_argument("--weights", default="auto", choices=("auto", *WEIGHT_FILES),
                        help="which weights of the run: auto = averaged when saved, else model")
    parser.add_argument("--parallel", type=positive_int, default=None,
                        help="(task, seed) jobs fine-tuned at once, each in its own process on the same device "
                             "(default: min(jobs, 4) on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 = torch default (1 is often faster for tiny models on a busy host)")
    parser.add_argument("--json", default=None, help="also write records and medians to this JSON file (default: print only)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines on stderr")
    args = parser.parse_args(argv)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.json:
        # fail now rather than after hours of fine-tuning
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return parser.fail(f"--json {args.json}: {e.strerror}")
    if args.threads < 0:
        return parser.fail(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        if not args.lr > 0:
            raise DownstreamError(f"--lr must be > 0, got {args.lr}")
        results = evaluate_run(args.run_dir, tasks, data_root=args.data_root, seeds=args.seeds,
                               epochs=args.epochs, max_train=args.max_train, max_dev=args.max_dev,
                               device=args.device, batch_size=args.batch_size, lr=args.lr,
                               weights=args.weights, parallel=args.parallel, log=log)
    except DownstreamError as e:
        return parser.fail(e)
    summary = summarize(results)
    print(_format_table(results, summary))
    if args.json:
        payload = {
            "run_dir": str(args.run_dir),
            "protocol": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "betas": [0.9, 0.98],
                         "eps": 1e-6, "weight_decay": 0.0, "warmup": 0.1, "schedule": "cosine", "dropout": 0.1,
                         "max_train": args.max_train, "max_dev": args.max_dev},
            "results": results,
            "medians": {name: {"metric": e["metric"], "median": e["median"]} for name, e in summary.items()},
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


