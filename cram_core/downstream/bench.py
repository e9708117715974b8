"""``python -m cram_core.downstream bench RUN_DIR``: fine-tuning throughput with seeds run side by side.

For each ``--parallel`` setting, one whole :func:`evaluate_run` (worker start-up, model builds, CUDA graph
capture, training, evaluation) of one task over all seeds is timed; examples/s = train examples x epochs x
seeds / that wall time. The per-seed scores are printed beside it: a parallel setting must not change them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cram_core.cli import OneLineParser, positive_int
from cram_core.downstream.classifier import WEIGHT_FILES
from cram_core.downstream.errors import DownstreamError
from cram_core.downstream.finetune import evaluate_run
from cram_core.downstream.tasks import DATA_ROOT_ENV, DEFAULT_DATA_ROOT

COLUMNS = ("parallel", "wall_s", "examples/s", "median", "mean", "sd", "scores")


def parallel_list(text: str) -> list[int]:
    """argparse type for ``--parallel 1,4``: comma-separated integers >= 1."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return [positive_int(v) for v in values]


def bench_row(parallel: int, records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    scores = [r["value"] for r in records]
    examples = sum(r["n_train"] * r["epochs"] for r in records)
    return {"parallel": parallel, "wall_s": wall_s, "examples_per_second": examples / wall_s,
            "median": statistics.median(scores), "mean": statistics.fmean(scores),
            "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "seeds": [r["seed"] for r in records], "scores": scores}


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["  ".join(f"{c:>10}" for c in COLUMNS[:-1]) + "  " + COLUMNS[-1]]
    for r in rows:
        lines.append(f"{r['parallel']:>10}  {r['wall_s']:>10.1f}  {r['examples_per_second']:>10.0f}  "
                     f"{r['median']:>10.4f}  {r['mean']:>10.4f}  {r['sd']:>10.4f}  "
                     + ", ".join(f"{v:.4f}" for v in r["scores"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m cram_core.downstream bench",
        description="Time fine-tuning of one task over all seeds at each --parallel setting; print examples/s "
                    "and the per-seed scores.",
    )
    parser.add_argument("run_dir", help="a training run's --out directory")
    parser.add_argument("--task", default="rt-polarity", help="the task to fine-tune")
    parser.add_argument("--seeds", type=positive_int, default=5, help="fine-tuning seeds 0..N-1")
    parser.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs per seed")
    parser.add_argument("--max-train", type=positive_int, default=3000, help="cap train examples (seeded subset)")
    parser.add_argument("--max-dev", type=positive_int, default=None, help="cap dev examples (default: all)")
    parser.add_argument("--parallel", type=parallel_list, default="1,4",
                        help="comma-separated numbers of seeds run side by side, one timed run each")
    parser.add_argument("--data-root", default=None,
                        help=f"folder of <task>/task.json (default ${DATA_ROOT_ENV} or {DEFAULT_DATA_ROOT})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else CPU")
    parser.add_argument("--weights", default="auto", choices=("auto", *WEIGHT_FILES),
                        help="which weights of the run: auto = averaged when saved, else model")
    parser.add_argument("--json", default=None, help="also write the rows and every record to this JSON file")
    args = parser.parse_args(argv)

    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return parser.fail(f"--json {args.json}: {e.strerror}")
    rows, all_records = [], []
    try:
        for parallel in args.parallel:
            t0 = time.perf_counter()
            records = evaluate_run(args.run_dir, [args.task], data_root=args.data_root, seeds=args.seeds,
                                   epochs=args.epochs, max_train=args.max_train, max_dev=args.max_dev,
                                   device=args.device, weights=args.weights, parallel=parallel)
            rows.append(bench_row(parallel, records, time.perf_counter() - t0))
            all_records.append(records)
            print(f"parallel {parallel}: {rows[-1]['wall_s']:.1f} s, {rows[-1]['examples_per_second']:.0f} "
                  f"examples/s; {records[0]['metric']} " + ", ".join(f"{v:.4f}" for v in rows[-1]["scores"]),
                  file=sys.stderr, flush=True)
    except DownstreamError as e:
        return parser.fail(e)
    print(f"{args.task}: {records[0]['n_train']} train x {args.epochs} epochs x {args.seeds} seeds, "
          f"{records[0]['n_dev']} dev, {records[0]['metric']}")
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"run_dir": str(args.run_dir), "task": args.task, "rows": rows,
                                               "records": all_records}, indent=2))
    return 0
