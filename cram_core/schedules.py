"""Budget-relative schedules: learning-rate factor, batch-size ramp and sequence-length curriculum.

Everything here is a pure function of the progress fraction p in [0, 1] that ``BudgetClock`` reports,
so a schedule behaves the same whether the budget is seconds, tokens or FLOPs, and tests need no clock.
"""

from __future__ import annotations

import math
from typing import Callable

from cram_core.config import TrainConfig

# inverse-sqrt: f(p) = 1 / sqrt(1 + K p). The classic rsqrt schedule decays as 1/sqrt(step / tau) after a
# warm-up of tau steps; in budget terms tau = 1/K of the budget. K = 15 puts the factor at exactly 1/4 of
# peak when the budget runs out (and 1/3.5 at p = 0.75), the same floor the triangle schedule starts from.
INVERSE_SQRT_K = 15.0

# Shape functions f(p, cfg) -> factor, with p already clamped to [0, 1].
ShapeFn = Callable[[float, TrainConfig], float]


def _cycle_position(p: float, num_cycles: int) -> float:
    """Progress within the current cycle, in [0, 1]; p = 1 is the end of the last cycle, not a restart."""
    scaled = p * num_cycles
    return scaled - min(math.floor(scaled), num_cycles - 1)


def _one_cycle(p: float) -> float:
    return min(2.0 * p, 2.0 * (1.0 - p))


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _dive(p: float, cfg: TrainConfig) -> float:
    if p <= cfg.dive_at:
        return 1.0
    return (1.0 - p) / (1.0 - cfg.dive_at)  # dive_at < 1 is guaranteed by TrainConfig


SCHEDULES: dict[str, ShapeFn] = {
    "constant": lambda p, cfg: 1.0,
    "linear": lambda p, cfg: 1.0 - p,
    "cosine": lambda p, cfg: _cosine(p),
    "cosine-restarts": lambda p, cfg: _cosine(_cycle_position(p, cfg.num_cycles)),
    "inverse-sqrt": lambda p, cfg: 1.0 / math.sqrt(1.0 + INVERSE_SQRT_K * p),
    "one-cycle": lambda p, cfg: _one_cycle(p),
    # The paper's final recipe; it peaks at p = 0.75 where the two lines meet, not at the midpoint.
    "triangle": lambda p, cfg: min(0.25 + p, 4.0 * (1.0 - p)),
    # Linear from 0 at the start to the peak at the very end: the opposite of every decaying schedule.
    "ramp": lambda p, cfg: p,
    "dive": _dive,
    "multi-cycle": lambda p, cfg: _one_cycle(_cycle_position(p, cfg.num_cycles)),
    "polynomial": lambda p, cfg: (1.0 - p) ** cfg.power,
}


def _clamp_progress(p: float) -> float:
    p = float(p)
    if math.isnan(p):
        raise ValueError("progress p is NaN")  # min/max would pass NaN through silently
    return min(max(p, 0.0), 1.0)


def lr_factor(cfg: TrainConfig, p: float) -> float:
    """Multiplier of the peak LR at progress ``p``: the schedule shape times the warm-up/cool-down ramps."""
    try:
        shape = SCHEDULES[cfg.schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}") from None
    p = _clamp_progress(p)
    factor = shape(p, cfg)
    if cfg.warmup > 0:
        factor *= min(1.0, p / cfg.warmup)
    if cfg.cooldown > 0:
        factor *= min(1.0, (1.0 - p) / cfg.cooldown)
    return factor


def batch_size_at(cfg: TrainConfig, p: float) -> int:
    """Sequences per optimizer step at progress ``p``: always a whole number of micro-batches.

    Grows linearly from one micro-batch at p = 0 to ``batch_size`` at p = ``batch_ramp`` (rounded down to
    a micro-batch multiple), then stays at ``batch_size``. Micro-batches to accumulate = result // micro.
    """
    if cfg.batch_ramp == 0:
        return cfg.batch_size
    p = _clamp_progress(p)
    full = cfg.batch_size // cfg.micro_batch_size
    if p >= cfg.batch_ramp:
        return cfg.batch_size
    # Counting in micro-batches keeps the rounding exact; the epsilon stops p/ramp = 0.4999999... from
    # dropping a micro-batch at points where the line lands exactly on a multiple.
    num_micro = math.floor(1 + (full - 1) * p / cfg.batch_ramp + 1e-9)
    return min(max(num_micro, 1), full) * cfg.micro_batch_size


def seq_len_at(cfg: TrainConfig, p: float, full_seq_len: int) -> int:
    """Sequence length at progress ``p``: the first curriculum stage with p < its end, else full length."""
    p = _clamp_progress(p)
    for length, until in cfg.curriculum():
        if p < until:
            return length
    return full_seq_len
