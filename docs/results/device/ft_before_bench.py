"""Time the fine-tuning code of a09da37^ (cram_core/downstream.py, one module) the way
``python -m cram_core.downstream bench`` times today's: one whole ``evaluate_run`` over all seeds (run loading,
tokenisation, model builds, training, evaluation), seeds one after another in this process.

Run with the old package first on the path (``python`` puts this file's folder, not the cwd, at sys.path[0]):

    PYTHONPATH=.devdata/ft/before:$PYTHONPATH python docs/results/device/ft_before_bench.py RUN_DIR --json OUT.json ...

Adapter: today's trainer writes config fields the old config classes lack (train.mark_sequences). They are
dropped from a copy of config.json in a temporary run folder (weights and tokenizer symlinked); a dropped
field of the model group is refused, since the old code would then build another encoder than the run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BEFORE = Path(__file__).resolve().parents[3] / ".devdata" / "ft" / "before"
"where pack.sh unpacks cram_core as of a09da37^ (repo root/.devdata/ft/before)"

import cram_core  # noqa: E402  (the check below needs the import first)

if Path(cram_core.__file__).resolve().parent != BEFORE / "cram_core":
    sys.exit(f"ft_before_bench.py: imported cram_core from {Path(cram_core.__file__).parent}, not {BEFORE}; "
             f"run with PYTHONPATH={BEFORE} first (bash docs/results/device/pack.sh makes it)")

import torch  # noqa: E402
from cram_core import downstream as old  # noqa: E402
from cram_core.config import GROUPS  # noqa: E402


def adapt_run(run_dir: Path, into: Path) -> list[str]:
    """Write a run folder the old load_run reads into ``into``; returns the dropped 'group.field' names."""
    raw = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    dropped = []
    for group, values in raw.items():
        if group not in GROUPS:
            continue  # vocab_size and anything else outside the groups: the old load_run handles them itself
        known = {f.name for f in dataclasses.fields(GROUPS[group])}
        dropped += [f"{group}.{k}" for k in values if k not in known]
        raw[group] = {k: v for k, v in values.items() if k in known}
    model_fields = [d for d in dropped if d.startswith("model.")]
    if model_fields:
        sys.exit(f"ft_before_bench.py: the old code lacks model field(s) {', '.join(model_fields)}: it would build "
                 "another encoder; pretrain with the old trainer instead")
    (into / "config.json").write_text(json.dumps(raw, indent=2))
    for name in ("tokenizer.json", *old.WEIGHT_FILES.values()):
        if (run_dir / name).is_file():
            os.symlink((run_dir / name).resolve(), into / name)
    return dropped


def main() -> int:
    p = argparse.ArgumentParser(prog="ft_before_bench.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--task", default="rt-polarity")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-train", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", required=True, type=Path)
    args = p.parse_args()
    if args.seeds < 1 or args.max_train < 1 or args.epochs < 1:
        p.error("--seeds, --max-train and --epochs must be >= 1")
    if not (args.run_dir / "config.json").is_file():
        p.error(f"{args.run_dir} has no config.json (not a finished training run?)")

    with tempfile.TemporaryDirectory(prefix="ft-before-run-") as tmp:
        dropped = adapt_run(args.run_dir, Path(tmp))
        if dropped:
            print(f"adapter: dropped {', '.join(dropped)} from config.json (fields the old code lacks)",
                  file=sys.stderr)
        log = lambda msg: print(f"before: {msg}", file=sys.stderr, flush=True)  # noqa: E731
        t0 = time.perf_counter()
        try:
            records = old.evaluate_run(tmp, [args.task], data_root=args.data_root, seeds=args.seeds,
                                       epochs=args.epochs, max_train=args.max_train, device=args.device, log=log)
        except old.DownstreamError as e:
            sys.exit(f"ft_before_bench.py: {e}")
        wall_s = time.perf_counter() - t0

    scores = [r["value"] for r in records]
    row = {"parallel": 1, "wall_s": wall_s,
           "examples_per_second": sum(r["n_train"] * r["epochs"] for r in records) / wall_s,
           "median": statistics.median(scores), "mean": statistics.fmean(scores),
           "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
           "seeds": [r["seed"] for r in records], "scores": scores}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"code": "a09da37^", "cram_core": str(Path(cram_core.__file__).parent),
                                     "run_dir": str(args.run_dir), "task": args.task, "adapter_dropped": dropped,
                                     "torch_threads": torch.get_num_threads(), "rows": [row],
                                     "records": [records]}, indent=2))
    print(f"before: {wall_s:.1f} s, {row['examples_per_second']:.0f} examples/s; {records[0]['metric']} "
          + ", ".join(f"{v:.4f}" for v in scores), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
