"""Budgets that travel between GPUs: "24 hours on GPU X" as a FLOP budget.

``1day@2080ti`` means the model FLOPs an RTX 2080 Ti does in one day at a stated model-FLOP utilisation
(MFU): duration x datasheet peak x utilisation. A FLOP budget means the same work on every machine, so a
user on an H200 can run "the paper's budget" (one day on a 2080 Ti) and every table says what it stands for.

The peaks are dense (no sparsity) tensor-core rates for the precision mixed-precision training uses on that
card, from the vendors' datasheets and whitepapers:

=========  ==============  =============  ===========================================================
card       peak TFLOP/s    precision      source
=========  ==============  =============  ===========================================================
2080ti     53.8            fp16, fp32 acc Turing whitepaper (GeForce halves fp32-accumulate tensor rate;
                                          107.6 is the fp16-accumulate figure, which AMP does not use)
a4000      76.7            fp16/bf16      RTX A4000 datasheet: 153.4 with sparsity
v100       125             fp16           V100 SXM2 datasheet
a6000      154.8           fp16/bf16      RTX A6000 datasheet: 309.7 with sparsity
a100       312             bf16           A100 SXM datasheet
h100       989             bf16           H100 SXM datasheet: 1979 with sparsity
h200       989             bf16           H200 SXM datasheet: same tensor cores as H100 SXM
=========  ==============  =============  ===========================================================

The default utilisation is 0.35: the MFU this project's trainer measured for ``crammed-bert`` on an H200
(README, issue 2's benchmark: 35.4% at micro-batch 256). ``@GPU:U`` states another, e.g. ``1d@2080ti:0.5``.
The budget clock counts the same model FLOPs (forward + backward of the counted positions) as MFU does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cram_core.cli import unknown_name
from cram_core.config import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUPeak:
    name: str
    "the card as its datasheet names it"
    peak_flops: float
    "dense tensor-core FLOP/s in `precision`"
    precision: str
    "the precision the peak is for"


GPU_PEAKS = {
    "2080ti": GPUPeak(name="RTX 2080 Ti", peak_flops=53.8e12, precision="fp16 tensor, fp32 accumulate"),
    "a4000": GPUPeak(name="RTX A4000", peak_flops=76.7e12, precision="fp16/bf16 tensor, dense"),
    "v100": GPUPeak(name="V100 SXM2", peak_flops=125e12, precision="fp16 tensor"),
    "a6000": GPUPeak(name="RTX A6000", peak_flops=154.8e12, precision="fp16/bf16 tensor, dense"),
    "a100": GPUPeak(name="A100 SXM", peak_flops=312e12, precision="bf16 tensor, dense"),
    "h100": GPUPeak(name="H100 SXM", peak_flops=989e12, precision="bf16 tensor, dense"),
    "h200": GPUPeak(name="H200 SXM", peak_flops=989e12, precision="bf16 tensor, dense"),
}
DEFAULT_UTILISATION = 0.35
"model-FLOP utilisation assumed when the budget text states none (this trainer's measured H200 MFU)"

_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
                   "d": 86400, "day": 86400, "days": 86400}
_TRAVEL_RE = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+)\s*(?P<unit>[a-z]+)\s*@\s*(?P<gpu>[A-Za-z0-9 _-]+?)"
                        r"\s*(?::\s*(?P<util>[0-9]*\.?[0-9]+)\s*(?P<pct>%?))?\s*$")
EXAMPLE = "1day@2080ti, 8h@a100, 1d@2080ti:0.5"


@dataclass(frozen=True, kw_only=True, slots=True)
class Conversion:
    """How a ``DURATION@GPU`` budget became FLOPs; stored with the sweep and each trial's budget."""

    text: str
    seconds: float
    gpu: str
    peak_flops: float
    utilisation: float

    @property
    def flops(self) -> float:
        return self.seconds * self.peak_flops * self.utilisation

    def describe(self) -> str:
        peak = GPU_PEAKS[self.gpu]
        s = self.seconds
        duration = f"{s / 3600:.4g} h" if s >= 3600 else f"{s / 60:.4g} min" if s >= 60 else f"{s:.4g} s"
        return (f"{self.text} = {self.flops:.3g} FLOP: {duration} x {self.peak_flops / 1e12:g} TFLOP/s "
                f"({peak.name} datasheet peak, {peak.precision}) x {self.utilisation:.0%} MFU")

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "seconds": self.seconds, "gpu": GPU_PEAKS[self.gpu].name,
                "peak_flops": self.peak_flops, "utilisation": self.utilisation, "flops": self.flops,
                "describe": self.describe()}


def is_travel(text: str) -> bool:
    return "@" in text


def _gpu_key(name: str) -> str:
    key = re.sub(r"[\s_-]", "", name.lower())
    return key.removeprefix("rtx").removeprefix("nvidia")


def convert(text: str) -> Conversion:
    """'1day@2080ti' -> Conversion; a bad duration, GPU or utilisation is a ConfigError naming what is valid."""
    m = _TRAVEL_RE.match(text)
    if not m or m["unit"] not in _DURATION_UNITS:
        raise ConfigError(f"bad budget {text!r}; expected DURATION@GPU[:UTILISATION], e.g. {EXAMPLE} "
                          f"(units {', '.join(_DURATION_UNITS)})")
    gpu = _gpu_key(m["gpu"])
    if gpu not in GPU_PEAKS:
        raise ConfigError(f"budget {text!r}: " + unknown_name("GPU", m["gpu"], GPU_PEAKS, listed=", ".join(GPU_PEAKS)))
    utilisation = DEFAULT_UTILISATION
    if m["util"] is not None:
        utilisation = float(m["util"]) / (100 if m["pct"] else 1)
    if not 0 < utilisation <= 1:
        raise ConfigError(f"budget {text!r}: utilisation must be in (0, 1] (or 1-100%), got {m['util']}{m['pct']}")
    seconds = float(m["num"]) * _DURATION_UNITS[m["unit"]]
    if seconds <= 0:
        raise ConfigError(f"bad budget {text!r}: the duration must be > 0")
    return Conversion(text=text.strip(), seconds=seconds, gpu=gpu, peak_flops=GPU_PEAKS[gpu].peak_flops,
                      utilisation=utilisation)
