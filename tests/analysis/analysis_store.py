"""A synthetic results store with known numbers, built through the store's own ORM classes."""

from __future__ import annotations

import hashlib
import math

from sweeps.store import EvalRow, MetricRow, SweepRow, TrialRow, make_engine, session_factory

NUM_POINTS = 60
BASE_CONFIG = {
    "model": {"norm_scheme": "pre", "num_layers": 2},
    "objective": {"mask_rate": 0.25},
    "optim": {"lr": 1e-3},
    "train": {"schedule": "triangle", "batch_size": 64},
    "budget": {"kind": "tokens", "amount": 1e6},
    "data": {"source": "sample"},
    "impl": {"compile": False},
}

# eval_loss per seed; chosen so each verdict is unambiguous (checked against scipy in the tests)
LR_SCHEDULES = {
    "baseline": [2.50, 2.52, 2.48],
    "one-cycle": [2.40, 2.41, 2.39],
    "constant": [2.70, 2.72, 2.69],
    "cosine": [2.51, 2.47, 2.50],
    "inverse-sqrt": [2.45],
}
THROUGHPUT = {"baseline": 1000.0, "one-cycle": 1000.0, "constant": 1100.0, "cosine": 950.0, "inverse-sqrt": 1000.0,
              "ramp": 1000.0}
GROUPS = {
    "baseline": ([2.30, 2.32], 78.0),
    "bert-architecture": ([2.60, 2.63], 76.0),
    "bert-training": ([2.35, 2.36], 77.5),
    "bert-data": ([2.40, 2.42], 77.0),
}
GLUE_TASKS = ("cola", "sst2", "rte")


def _curve(final_loss: float, seed: int, tokens: float, seconds: float, diverge: bool) -> list[dict]:
    points = []
    for step in range(1, NUM_POINTS + 1):
        p = step / NUM_POINTS
        wiggle = 0.03 * math.sin(step * 1.7 + seed)
        loss = final_loss + (10.4 - final_loss) * math.exp(-6 * p) + wiggle
        if diverge and p > 0.6:
            loss = None if p > 0.8 else loss + 20 * (p - 0.6)
        points.append({"step": step, "progress": p, "tokens": tokens * p, "seconds": seconds * p,
                       "flops": 1e12 * p, "loss": loss, "lr": 1e-3 * min(0.25 + p, 4 * (1 - p)),
                       "batch_size": 16 * (1 + min(3, int(p / 0.15))), "seq_len": 128,
                       "tokens_per_second": tokens / seconds, "mfu": 0.3})
    return points


def _trial(sweep: SweepRow, variant: str, seed: int, *, loss: float | None, status: str = "completed",
           tps: float = 1000.0, with_eval_loss: bool = True, curve: bool = True,
           glue: float | None = None) -> TrialRow:
    seconds = 1000.0
    tokens = tps * seconds
    config = {**BASE_CONFIG, "train": {**BASE_CONFIG["train"], "schedule": variant}}
    done = status == "completed"
    trial = TrialRow(sweep=sweep, variant=variant, seed=seed, is_baseline=variant == "baseline", config=config,
                     config_hash=hashlib.md5(variant.encode()).hexdigest(), status=status,
                     final_loss=loss + 0.1 if done and loss is not None else None,
                     eval_loss=loss if done and with_eval_loss else None, tokens=tokens if done else None,
                     seconds=seconds if done else None, tokens_per_second=tps if done else None,
                     params=1_000_000)
    if curve and loss is not None:
        trial.metrics = [MetricRow(**p) for p in _curve(loss, seed, tokens, seconds, status == "diverged")]
    if glue is not None:
        # five fine-tuning seeds; the median is glue + task offset (the outliers must not move it)
        offsets = (-3.0, -0.5, 0.0, 0.5, 10.0)
        trial.evals = [EvalRow(task=task, metric="acc", value=glue + i + off, seed=k)
                       for i, task in enumerate(GLUE_TASKS) for k, off in enumerate(offsets)]
    return trial


def build_store(url: str) -> None:
    engine = make_engine(url, create=True)
    with session_factory(engine)() as session, session.begin():
        lr = SweepRow(name="lr_schedules", definition={"axis": "train.schedule"})
        for variant, losses in LR_SCHEDULES.items():
            for seed, loss in enumerate(losses):
                session.add(_trial(lr, variant, seed, loss=loss, tps=THROUGHPUT[variant] + seed))
        for seed in range(3):
            session.add(_trial(lr, "ramp", seed, loss=2.6, status="diverged"))
        session.add(_trial(lr, "baseline", 99, loss=None, status="failed", curve=False))

        single = SweepRow(name="single_seed", definition={})
        session.add(_trial(single, "baseline", 0, loss=2.50))
        session.add(_trial(single, "pre-ln", 0, loss=2.40, tps=1200.0))
        session.add(_trial(single, "post-ln", 0, loss=2.60, with_eval_loss=False))

        empty = SweepRow(name="empty_sweep", definition={})
        session.add(_trial(empty, "baseline", 0, loss=None, status="running", curve=False))
        session.add(_trial(empty, "other", 0, loss=None, status="planned", curve=False))
        session.add(SweepRow(name="no_trials", definition={}))

        group = SweepRow(name="group_ablation", definition={})
        for variant, (losses, glue) in GROUPS.items():
            for seed, loss in enumerate(losses):
                session.add(_trial(group, variant, seed, loss=loss, glue=glue + 0.2 * seed))
    engine.dispose()
