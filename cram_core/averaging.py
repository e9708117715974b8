"""Weight averaging evaluated at the end of training: EMA or LAWA (latest-weight averaging).

Only floating-point parameters and buffers are averaged; integer buffers are taken from the live model.
Tensors are matched to the model by position in ``state_dict`` order, not by name, so the model passed
to ``update`` may be a wrapper of the one given at construction (``torch.compile`` adds ``_orig_mod.``
to every name). Tied weights are averaged once and written under every name they appear as.

Create the averager after the model is on its final device: EMA copies live on that device.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import nn

from cram_core.config import TrainConfig


class _Layout:
    """Which state-dict entries are averaged, and how to rebuild a loadable state dict from averages."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        entries = model.state_dict(keep_vars=True)
        self.num_entries = len(entries)
        self.positions: list[int] = []  # index in state-dict order of each distinct floating tensor
        self.keys: list[str] = []  # name of each distinct floating tensor (its first alias)
        self.alias: dict[str, int] = {}  # every state-dict name of a floating tensor -> its distinct index
        seen: dict[int, int] = {}
        for position, (name, value) in enumerate(entries.items()):
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                continue
            if id(value) not in seen:  # tied weights appear under several names but are one tensor
                seen[id(value)] = len(self.positions)
                self.positions.append(position)
                self.keys.append(name)
            self.alias[name] = seen[id(value)]

    def live(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's current floating tensors (detached, not copied), in layout order."""
        values = list(model.state_dict(keep_vars=True).values())
        if len(values) != self.num_entries:
            raise ValueError(
                f"WeightAverager.update: model has {len(values)} state entries, expected {self.num_entries}; "
                "pass the model (or a wrapper of it) the averager was built for"
            )
        return [values[i].detach() for i in self.positions]

    def assemble(self, averaged: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict for ``self.model`` with averaged floating entries in the model's dtypes/devices."""
        out = {}
        for name, current in self.model.state_dict().items():
            if name in self.alias:
                out[name] = averaged[self.alias[name]].to(device=current.device, dtype=current.dtype, copy=True)
            else:
                out[name] = current.clone() if isinstance(current, torch.Tensor) else current
        return out

    def check_keys(self, saved: dict[str, Any], what: str) -> None:
        if list(saved) != self.keys:
            raise ValueError(f"WeightAverager.load_state_dict: {what} do not match this model's tensors")


class _NoAverage:
    def __init__(self, cfg: TrainConfig, model: nn.Module) -> None:
        pass

    def update(self, model: nn.Module, step: int, p: float) -> None:
        pass

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _EMA:
    """ema <- d_t * ema + (1 - d_t) * w after optimizer step t (1 on the first), d_t = min(decay, (1+t)/(10+t)).

    The warm-up of the decay (as TensorFlow's ExponentialMovingAverage with num_updates) keeps the random
    init out of the average: its weight after n steps is prod_t d_t = 10! (n+1)! / (n+10)! while the warm-up
    binds (0.18 after one step, 6e-5 after ten), where a fixed decay of 0.999 would leave 0.37 after 1000.
    While it binds, the average covers about the last tenth of the steps; ``decay`` caps it after that
    (t >= 8990 for 0.999). It reads the step the loop passes, so a resumed run continues the same schedule.
    """

    WARMUP_OFFSET = 10.0
    "d_t = (1 + t) / (WARMUP_OFFSET + t) until that reaches ``decay``"

    def __init__(self, cfg: TrainConfig, model: nn.Module) -> None:
        self.decay = cfg.ema_decay
        self.layout = _Layout(model)
        # float32 even for bf16/fp16 weights: with decay 0.999 each step moves the average by 1e-3 of the
        # gap, which a 16-bit accumulator would mostly round away.
        self.weights = [t.to(torch.float32, copy=True) for t in self.layout.live(model)]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (self.WARMUP_OFFSET + step))

    def update(self, model: nn.Module, step: int, p: float) -> None:
        live = [t.float() for t in self.layout.live(model)]
        torch._foreach_lerp_(self.weights, live, 1.0 - self.decay_at(step))

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        return self.layout.assemble(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.layout.keys, self.weights))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layout.check_keys(state["weights"], "EMA weights")
        for mine, saved in zip(self.weights, state["weights"].values()):
            mine.copy_(saved)


class _LAWA:
    """Mean of the last ``lawa_k`` snapshots, one taken each time p crosses a multiple of ``lawa_every``."""

    def __init__(self, cfg: TrainConfig, model: nn.Module) -> None:
        if cfg.lawa_every <= 0:
            raise ValueError("train.lawa_every must be > 0 for train.averaging=lawa")
        self.every = cfg.lawa_every
        self.layout = _Layout(model)
        # Snapshots sit in host memory: k full copies of a large model would crowd the accelerator.
        self.snapshots: deque[list[torch.Tensor]] = deque(maxlen=cfg.lawa_k)
        self.crossed = 0  # multiples of lawa_every passed so far; p = 0 (the random init) is not one

    def update(self, model: nn.Module, step: int, p: float) -> None:
        # The epsilon keeps p = 0.15 with every = 0.05 from reading as 2.9999999 multiples.
        crossed = math.floor(p / self.every + 1e-9)
        if crossed <= self.crossed:
            return
        # A step that jumps over several multiples stores one snapshot: the weights are the same for all.
        self.crossed = crossed
        self.snapshots.append([t.to("cpu", torch.float32, copy=True) for t in self.layout.live(model)])

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        if not self.snapshots:
            return self.layout.assemble(self.layout.live(self.layout.model))
        total = [t.clone() for t in self.snapshots[0]]
        for snapshot in list(self.snapshots)[1:]:
            torch._foreach_add_(total, snapshot)
        torch._foreach_div_(total, float(len(self.snapshots)))
        return self.layout.assemble(total)

    def state_dict(self) -> dict[str, Any]:
        return {
            "crossed": self.crossed,
            "snapshots": [dict(zip(self.layout.keys, snapshot)) for snapshot in self.snapshots],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots.clear()
        for saved in state["snapshots"]:
            self.layout.check_keys(saved, "LAWA snapshot tensors")
            self.snapshots.append([t.to("cpu", torch.float32, copy=True) for t in saved.values()])
        self.crossed = int(state["crossed"])


AVERAGERS = {"none": _NoAverage, "ema": _EMA, "lawa": _LAWA}


class WeightAverager:
    """Keeps an average of the model's weights during training; ``averaging=none`` makes it a no-op.

    Call ``update(model, step, p)`` after every optimizer step, with p the budget progress after it.
    ``averaged_state_dict()`` is loadable with ``model.load_state_dict`` (None for ``averaging=none``).
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module) -> None:
        try:
            strategy = AVERAGERS[cfg.averaging]
        except KeyError:
            raise ValueError(f"unknown averaging {cfg.averaging!r}; valid: {', '.join(AVERAGERS)}") from None
        self.kind = cfg.averaging
        self._strategy = strategy(cfg, model)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, p: float) -> None:
        # EMA warms its decay up by ``step``; LAWA snapshots by ``p``.
        self._strategy.update(model, step, p)

    @torch.no_grad()
    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self._strategy.averaged_state_dict()

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints. Tensors are the averager's own (not copies), as with ``nn.Module.state_dict``."""
        return {"averaging": self.kind, **self._strategy.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["averaging"] != self.kind:
            raise ValueError(
                f"WeightAverager.load_state_dict: checkpoint has averaging={state['averaging']!r}, "
                f"this run uses {self.kind!r}"
            )
        self._strategy.load_state_dict(state)
