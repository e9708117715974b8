"""Sweep definitions: one sweep per part of the ablation catalogue (shared/ABLATIONS.md).

A sweep is a baseline preset plus either an *axis* (named variants, each a dict of ``group.field``
overrides) or a *search space* (a define-by-run function of an Optuna trial returning overrides, sampled
by TPE), a number of seeds and a budget. The variant named ``baseline`` has no overrides and is always
first, so every table compares against it.

Adding an ablation is a few lines::

    SWEEPS["my_idea"] = Sweep(name="my_idea", section="training", axis="my knob",
                              variants={"knob on": {"optim.wrapper": "sam"}})

Override values are plain values, or a `Derived` value computed from the baseline config, so that one
sweep fits every preset (a "2x batch" means 64 on ``tiny`` and 1024 on ``crammed-bert-short``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cram_core import budget_units
from cram_core.cli import unknown_name
from cram_core.config import ConfigError, RunConfig, apply_overrides
from cram_core.presets import PRESETS, bert_base, crammed_bert, get_preset

BASELINE = "baseline"
CPU_PRESET = "tiny"
GPU_PRESET = "crammed-bert-short"
# On a CPU (or any shared machine, or a GPU shared by packed trials) a seconds budget measures the
# neighbours, so these presets default to a budget in work done: this many tokens, or, for sweeps whose
# variants change the cost per token, the FLOPs the baseline spends on them. Other presets keep their
# seconds budget (the paper's setting). gpu-sweep's is its own token budget (cram_core/presets.py says why).
WORK_BUDGET_TOKENS = {"tiny": 100_000.0, "gpu-sweep": get_preset("gpu-sweep").budget.tokens}
# Presets too small to fill a GPU alone: a sweep packs this many trials per GPU unless --gpus-per-trial says
# otherwise. gpu-sweep on one H200: four trials together train 2.7M tokens/s, one alone 1.85M in the bench
# and 1.27M in a sweep trial (docs/results).
TRIALS_PER_GPU = {"gpu-sweep": 4}


@dataclass(frozen=True)
class Derived:
    """An override value computed from the baseline config (``describe`` is what `show` prints)."""

    describe: str
    compute: Callable[[RunConfig], Any]

    def __repr__(self) -> str:
        return self.describe


Overrides = Mapping[str, Any]
SearchSpace = Callable[[Any], dict[str, Any]]  # optuna.Trial -> overrides


@dataclass(frozen=True, kw_only=True)
class Sweep:
    name: str
    "registry key and the name of the Optuna study / store sweep"
    section: str
    "architecture, training, data or groups (the ABLATIONS.md table it re-measures)"
    axis: str
    "what varies, in a few words"
    variants: Mapping[str, Overrides] = field(default_factory=dict)
    "named variants besides the baseline; empty for a search sweep"
    search: SearchSpace | None = None
    "define-by-run search space for TPE; the sweep is a grid when None"
    search_label: Callable[[dict[str, Any]], str] | None = None
    "turns a sampled set of overrides into a variant name for tables"
    num_trials: int = 0
    "TPE samples (search sweeps), the baseline included"
    seeds: int = 3
    "seeds per variant (grid sweeps); seed i sets train.seed = i"
    budgets: Mapping[str, str] = field(default_factory=dict)
    "per-preset default budget, where the preset's own budget would not fit the sweep (see `show`)"
    cost_per_token_varies: bool | None = None
    "variants change FLOPs per token (CPU default is then a FLOP budget); None = architecture/groups sections"
    note: str = ""
    "one line shown by `show`: what the paper found, caveats"

    def __post_init__(self) -> None:
        assert (self.search is None) != (not self.variants), f"{self.name}: give variants or a search space"
        assert BASELINE not in self.variants, f"{self.name}: the baseline is implicit"
        assert self.search is None or self.num_trials >= 2, f"{self.name}: a search needs num_trials >= 2"

    @property
    def is_search(self) -> bool:
        return self.search is not None

    @property
    def cpu_budget_kind(self) -> str:
        """tokens, or flops where the variants change the cost per token (checked by a registry test)."""
        varies = self.cost_per_token_varies
        if varies is None:
            varies = self.section in ("architecture", "groups")
        return "flops" if varies else "tokens"

    def default_budget_text(self) -> str:
        """What `list` shows: per-preset budgets, else the CPU default and the presets' own seconds elsewhere."""
        if self.budgets:
            return ", ".join(f"{b} on {p}" for p, b in self.budgets.items())
        suffix = "" if self.cpu_budget_kind == "tokens" else " in FLOPs"
        cpu = ", ".join(f"{format_budget('tokens', t)}{suffix} on {p}" for p, t in WORK_BUDGET_TOKENS.items())
        return f"{cpu}; the preset's seconds elsewhere"

    def num_variants(self) -> int:
        return self.num_trials if self.is_search else 1 + len(self.variants)

    def trial_count(self, seeds: int | None = None) -> int:
        return self.num_trials if self.is_search else self.num_variants() * (seeds or self.seeds)


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]
    "resolved overrides (Derived values computed)"
    shown: dict[str, str]
    "overrides as `show` prints them (Derived values with their description)"
    config: RunConfig
    "config for seed 0; other seeds differ only in train.seed"
    config_hash: str
    same_as: str | None = None
    "set when this variant's config equals an earlier one under this preset (it is not run twice)"


@dataclass(frozen=True)
class PlannedTrial:
    variant: str
    seed: int
    config: RunConfig
    config_hash: str
    budget: BudgetPoint | None = None
    "this trial's budget, in a sweep run at several (--budgets)"


@dataclass(frozen=True, kw_only=True)
class BudgetPoint:
    """One budget of a sweep run at several (--budgets): what the user typed and what it resolved to."""

    text: str
    overrides: dict[str, float]
    "one budget.seconds / budget.tokens / budget.flops override"
    conversion: dict[str, Any] | None = None
    "how a DURATION@GPU budget became FLOPs (cram_core.budget_units.Conversion.to_dict)"

    @property
    def label(self) -> str:
        return self.conversion["describe"] if self.conversion else self.text

    def to_dict(self) -> dict[str, Any]:
        ((key, amount),) = self.overrides.items()
        return {"kind": key.split(".")[1], "amount": amount, "text": self.label,
                **({"conversion": self.conversion} if self.conversion else {})}


@dataclass(frozen=True)
class ResolvedSweep:
    sweep: Sweep
    preset: str
    budget_text: str
    "the budget as the user reads it, e.g. '20s (sweep default for tiny)'"
    base_overrides: tuple[str, ...]
    "--budget / --set overrides applied to the baseline of every variant"
    base: RunConfig
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    num_trials: int
    "trials this run plans: variants x seeds (x budgets) (grid) or TPE samples (search)"
    budgets: tuple[BudgetPoint, ...] = ()
    "the budgets of a sweep run at several (--budgets), smallest first; base has the first; empty: one budget"

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def budgets_text(self) -> str:
        """Every budget the sweep runs at, as the user reads them."""
        return "; ".join(p.label for p in self.budgets) or self.budget_text

    def runnable_variants(self) -> list[Variant]:
        return [v for v in self.variants if v.same_as is None]

    def trials(self) -> list[PlannedTrial]:
        """Every (variant, seed) of a grid sweep, seed-major so early results cover every variant."""
        out = []
        for seed in self.seeds:
            for point in self.budgets or (None,):
                for v in self.runnable_variants():
                    if point is None:
                        out.append(PlannedTrial(v.name, seed, with_seed(v.config, seed), v.config_hash))
                        continue
                    cfg = apply_overrides(v.config, point.overrides)
                    out.append(PlannedTrial(v.name, seed, with_seed(cfg, seed), cfg.hash(), point))
        return out

    def definition(self) -> dict[str, Any]:
        """JSON description stored with the sweep (and compared on resume)."""
        return {
            "name": self.name,
            "section": self.sweep.section,
            "axis": self.sweep.axis,
            "kind": "search" if self.sweep.is_search else "grid",
            "preset": self.preset,
            "budget": {"kind": self.base.budget.kind, "amount": self.base.budget.amount, "text": self.budget_text,
                       **({"conversion": c} if (c := budget_conversion(self.budget_text)) else {})},
            **({"budgets": [p.to_dict() for p in self.budgets]} if self.budgets else {}),
            "base_overrides": list(self.base_overrides),
            "base_config_hash": self.base.hash(),
            "seeds": list(self.seeds),
            "num_trials": self.num_trials,
            "variants": {v.name: v.shown for v in self.variants if v.same_as is None},
            "spec": self.spec(),
        }

    def spec(self) -> dict[str, Any] | None:
        """What rebuilds this grid sweep from the store alone (sweeps.adhoc.sweep_from_definition): every
        variant's overrides as resolved on this baseline. None for a search (its space is code)."""
        if self.sweep.is_search:
            return None
        return {"section": self.sweep.section, "axis": self.sweep.axis, "note": self.sweep.note,
                "variants": {v.name: v.overrides for v in self.variants if v.name != BASELINE}}


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def default_preset() -> str:
    import torch  # deferred: `list` and `show` should not pay for it unless they need it

    return GPU_PRESET if torch.cuda.is_available() else CPU_PRESET


def resolve(
    sweep: Sweep,
    *,
    preset: str | None = None,
    budget: str | None = None,
    seeds: int | None = None,
    num_trials: int | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    budgets: list[str] | None = None,
) -> ResolvedSweep:
    """Build every variant's RunConfig; any bad preset, budget or override is a ConfigError (one line).
    `budgets` (--budgets) runs every variant x seed at each of several budgets, the smallest as `budget`."""
    preset = preset or default_preset()
    base = get_preset(preset)
    points = budget_points(sweep, budgets, budget) if budgets is not None else ()
    budget = points[0].text if points else budget
    budget_overrides: dict[str, float] = {}
    if budget is not None:
        budget_overrides = parse_budget(budget)
        budget_text = budget_label(budget)
    elif preset in sweep.budgets:
        budget_overrides = parse_budget(sweep.budgets[preset])
        budget_text = f"{sweep.budgets[preset]} (this sweep's default for {preset})"
    elif preset in WORK_BUDGET_TOKENS:
        budget_overrides, budget_text = cpu_budget(sweep, apply_overrides(base, list(overrides)),
                                                   WORK_BUDGET_TOKENS[preset], preset)
    else:
        budget_text = f"{format_budget(base.budget.kind, base.budget.amount)} (preset {preset})"
    base = apply_overrides(base, budget_overrides)
    base = apply_overrides(base, list(overrides))
    base_overrides = tuple([f"{k}={v}" for k, v in budget_overrides.items()] + list(overrides))
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if sweep.is_search and seeds is not None:
        raise ConfigError(f"--seeds applies to grid sweeps; {sweep.name!r} is a TPE search: use --trials N")
    if num_trials is not None and not sweep.is_search:
        raise ConfigError(f"--trials applies to search sweeps; {sweep.name!r} is a grid: use --seeds N")
    if num_trials is not None and num_trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {num_trials}")

    variants = [Variant(BASELINE, {}, {}, base, base.hash())]
    seen = {base.hash(): BASELINE}
    for name, raw in sweep.variants.items():
        resolved = {k: (v.compute(base) if isinstance(v, Derived) else v) for k, v in raw.items()}
        try:
            cfg = apply_overrides(base, resolved)
        except ConfigError as e:
            raise ConfigError(f"sweep {sweep.name!r} variant {name!r}: {e}") from None
        shown = {k: (f"{v.describe} (= {resolved[k]})" if isinstance(v, Derived) else _fmt(v)) for k, v in raw.items()}
        h = cfg.hash()
        variants.append(Variant(name, resolved, shown, cfg, h, same_as=seen.get(h)))
        seen.setdefault(h, name)
    if sweep.is_search:
        _check_search_space(sweep, base)
        n_seeds, n_trials = 1, num_trials or sweep.num_trials
    else:
        n_seeds = seeds or sweep.seeds
        n_trials = sum(v.same_as is None for v in variants) * n_seeds * max(1, len(points))
    return ResolvedSweep(sweep, preset, budget_text, base_overrides, base, tuple(variants),
                         tuple(range(n_seeds)), n_trials, points)


def search_overrides(sweep: Sweep, trial: Any) -> dict[str, Any]:
    """Sampled overrides for one trial; also the place where their keys are checked."""
    assert sweep.search is not None
    return dict(sweep.search(trial))


def search_label(sweep: Sweep, overrides: dict[str, Any]) -> str:
    if sweep.search_label is not None:
        return sweep.search_label(overrides)
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in overrides.items())


def _check_search_space(sweep: Sweep, base: RunConfig) -> None:
    """Sample the space once with a throwaway study so a bad key fails before anything starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    try:
        apply_overrides(base, search_overrides(sweep, trial))
    except ConfigError as e:
        raise ConfigError(f"sweep {sweep.name!r} search space: {e}") from None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    return str(v).lower() if isinstance(v, bool) else str(v)


# ---------------------------------------------------------------- budgets

_BUDGET_RE = re.compile(
    r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>s|sec|m|min|h|d|(?P<prefix>[kKMGBTPE]?)(?P<kind>tok|tokens|flop|flops))\s*$"
)
_TIME_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_PREFIXES = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def parse_budget(text: str) -> dict[str, float]:
    """'90s' / '10m' / '1h' / '50Mtok' / '2e17flop' -> {'budget.seconds' | 'budget.tokens' | 'budget.flops': x};
    '1day@2080ti' -> the FLOPs that GPU does in that time (cram_core.budget_units)."""
    if budget_units.is_travel(text):
        return {"budget.flops": budget_units.convert(text).flops}
    m = _BUDGET_RE.match(text)
    if not m:
        raise ConfigError(f"bad budget {text!r}; expected e.g. 90s, 10m, 1h, 50Mtok, 2e17flop, "
                          f"or DURATION@GPU such as {budget_units.EXAMPLE}")
    number = float(m["num"])
    if m["kind"]:
        key = "budget.tokens" if m["kind"].startswith("tok") else "budget.flops"
        value = number * _PREFIXES[m["prefix"]]
    else:
        key, value = "budget.seconds", number * _TIME_UNITS[m["unit"]]
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"bad budget {text!r}: must be > 0")
    return {key: value}


def budget_label(text: str) -> str:
    """The budget as tables show it: a DURATION@GPU budget with its conversion to FLOPs spelled out."""
    return budget_units.convert(text).describe() if budget_units.is_travel(text) else text


def budget_conversion(label: str) -> dict[str, Any] | None:
    """The conversion behind a budget label (its first word: what the user typed), or None."""
    head = label.split(" ", 1)[0]
    return budget_units.convert(head).to_dict() if budget_units.is_travel(head) else None


def budget_points(sweep: Sweep, texts: list[str], budget: str | None) -> tuple[BudgetPoint, ...]:
    """--budgets 60s,120s,240s: two or more distinct budgets of one kind, smallest first."""
    if budget is not None:
        raise ConfigError("give --budget or --budgets, not both")
    if sweep.is_search:
        raise ConfigError(f"--budgets applies to grid sweeps; {sweep.name!r} is a TPE search: use --budget")
    points = [BudgetPoint(text=t.strip(), overrides=parse_budget(t.strip()), conversion=budget_conversion(t.strip()))
              for t in texts if t.strip()]
    kinds = {next(iter(p.overrides)) for p in points}
    if len(kinds) > 1:
        raise ConfigError(f"--budgets must all be one kind (seconds, tokens or FLOPs); got {', '.join(texts)}")
    amounts = [next(iter(p.overrides.values())) for p in points]
    if len(points) < 2 or len(set(amounts)) < len(amounts):
        raise ConfigError(f"--budgets needs two or more distinct budgets, e.g. 60s,120s,240s; got {','.join(texts)}")
    return tuple(sorted(points, key=lambda p: next(iter(p.overrides.values()))))


def stored_budget_text(budget: Mapping[str, Any]) -> str:
    """A budget of a stored definition's "budgets" as --budgets text that parses back to the same amount."""
    if budget.get("conversion"):
        return budget["conversion"]["text"]
    text = format_budget(budget["kind"], budget["amount"])
    if parse_budget(text) == {f"budget.{budget['kind']}": budget["amount"]}:
        return text
    return f"{budget['amount']!r}" + {"seconds": "s", "tokens": "tok", "flops": "flop"}[budget["kind"]]


def flops_per_token(cfg: RunConfig) -> float:
    """Training FLOPs per token at the full sequence length, as the budget clock counts them."""
    from cram_core.model import training_flops_per_sequence
    from cram_core.objective import MLMObjective

    seq_len, vocab = cfg.data.seq_len, cfg.data.vocab_size
    predictions = MLMObjective(cfg.objective, vocab).num_predictions(seq_len)
    return training_flops_per_sequence(cfg.model, vocab, seq_len, predictions) / seq_len


def cpu_budget(sweep: Sweep, base: RunConfig, tokens: float, preset: str) -> tuple[dict[str, float], str]:
    """The CPU default: `tokens` tokens, or the FLOPs the baseline spends on them when variants change the
    cost per token (so a costlier variant trains on fewer tokens, as it would in time on a dedicated GPU)."""
    if sweep.cpu_budget_kind == "tokens":
        text = format_budget("tokens", tokens)
        return parse_budget(text), f"{text} (this sweep's default for {preset}: variants keep the cost per token)"
    flops = float(f"{tokens * flops_per_token(base):.3g}")
    return ({"budget.flops": flops}, f"{format_budget('flops', flops)} (this sweep's default for {preset}: "
            f"{format_budget('tokens', tokens)} of the baseline; variants change the cost per token)")


def trials_per_gpu(preset: str) -> int:
    """How many trials of this preset share one GPU by default (TRIALS_PER_GPU; 1 for the others)."""
    return TRIALS_PER_GPU.get(preset, 1)


def format_budget(kind: str, amount: float) -> str:
    if kind == "seconds":
        return f"{amount / 3600:g}h" if amount >= 3600 else f"{amount / 60:g}m" if amount >= 600 else f"{amount:g}s"
    if kind == "tokens":
        return f"{amount / 1e6:g}Mtok" if amount >= 1e6 else f"{amount / 1e3:g}ktok" if amount >= 1e3 else f"{amount:g}tok"
    return f"{amount:.3g}flop"


# ---------------------------------------------------------------- helpers for preset-relative values


def scaled(group_field: str, factor: float, *, minimum: int = 1) -> Derived:
    """An integer field times `factor` (e.g. half the depth), never below `minimum`."""
    group, name = group_field.split(".")

    def compute(cfg: RunConfig) -> int:
        return max(minimum, int(round(getattr(getattr(cfg, group), name) * factor)))

    return Derived(f"{factor:g}x baseline", compute)


def _batch_times(factor: float) -> dict[str, Derived]:
    """Batch size x factor; the micro-batch shrinks with it when the batch gets smaller than one micro-batch."""
    def batch(cfg: RunConfig) -> int:
        return max(1, int(cfg.train.batch_size * factor))

    def micro(cfg: RunConfig) -> int:
        return math.gcd(cfg.train.micro_batch_size, batch(cfg))

    return {
        "train.batch_size": Derived(f"{factor:g}x baseline", batch),
        "train.micro_batch_size": Derived("divides the batch", micro),
    }


def _curriculum(cfg: RunConfig) -> str:
    full = cfg.data.seq_len
    return f"{full // 4}:0.25,{full // 2}:0.5"


def _group_reset(*groups: str, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Overrides that put `groups` back to original BERT (presets.bert_base) where it differs from the crammed
    recipe; fields in `keep` (model shape, batch) stay the preset's so the comparison is about the recipe."""
    bert, crammed = bert_base(), crammed_bert()
    out = {}
    for group in groups:
        for f in dataclasses.fields(getattr(bert, group)):
            key = f"{group}.{f.name}"
            value = getattr(getattr(bert, group), f.name)
            if key not in keep and value != getattr(getattr(crammed, group), f.name):
                out[key] = value
    return out


_SHAPE = ("model.num_layers", "model.hidden_size", "model.num_heads", "model.ffn_size", "model.max_seq_len")
_BATCH = ("train.batch_size", "train.micro_batch_size")
ARCHITECTURE_RESET = _group_reset("model", keep=_SHAPE)
TRAINING_RESET = _group_reset("objective", "optim", "train", keep=_BATCH)
DATA_RESET = _group_reset("data", keep=("data.vocab_size", "data.seq_len", "data.source"))


def _peak_lr_space(trial: Any) -> dict[str, Any]:
    return {
        "optim.lr": trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True),
        "train.warmup": trial.suggest_float("train.warmup", 0.0, 0.3),
    }


def _peak_lr_label(o: dict[str, Any]) -> str:
    return f"lr {o['optim.lr']:.2g}, warm-up {o['train.warmup']:.0%}"


# ---------------------------------------------------------------- the registry

# lr_schedules is the newcomer's first sweep (README): 11 variants x 5 seeds x 100k tokens (196 steps) on tiny,
# two trials at a time on 2 cores, about 5 minutes. Five seeds because the paired Δ of some schedules varies by
# ~0.03 nats between seeds; with t(4) the 95% CI is then within ±0.04 (measured: ±0.038 at most).
FIRST_RUN_SEEDS = 5

_SWEEP_LIST = [
    # ---- training
    Sweep(
        name="lr_schedules", section="training", axis="LR schedule (budget-relative)", seeds=FIRST_RUN_SEEDS,
        variants={
            "constant": {"train.schedule": "constant"},
            "linear decay": {"train.schedule": "linear"},
            "cosine": {"train.schedule": "cosine"},
            "cosine restarts": {"train.schedule": "cosine-restarts"},
            "inverse sqrt": {"train.schedule": "inverse-sqrt"},
            "one-cycle": {"train.schedule": "one-cycle"},
            "ramp": {"train.schedule": "ramp"},
            "dive at p=0.5": {"train.schedule": "dive", "train.dive_at": 0.5},
            "multi-cycle": {"train.schedule": "multi-cycle"},
            "polynomial": {"train.schedule": "polynomial"},
        },
        note="baseline = triangle; paper: many shapes are similar, the best warm up and cool down to 0",
    ),
    Sweep(
        name="peak_lr", section="training", axis="peak LR x warm-up (TPE)",
        search=_peak_lr_space, search_label=_peak_lr_label, num_trials=16,
        note="log-uniform LR in [1e-4, 1e-2], warm-up in [0, 0.3] of the budget; the baseline point is tried first",
    ),
    Sweep(
        name="optimizers", section="training", axis="optimizer (at the baseline LR)",
        variants={
            "Adam": {"optim.name": "adam"},
            "RAdam": {"optim.name": "radam"},
            "SGD + Nesterov": {"optim.name": "sgd", "optim.nesterov": True},
            "Adafactor": {"optim.name": "adafactor"},
            "Lion": {"optim.name": "lion"},
            "AdamW + LARS": {"optim.wrapper": "lars"},
            "AdamW + SAM": {"optim.wrapper": "sam"},
        },
        note="paper: no optimizer beat AdamW; every variant runs at the baseline's peak LR",
    ),
    Sweep(
        name="adam_hparams", section="training", axis="Adam beta2 / epsilon",
        variants={
            "beta2 0.999": {"optim.beta2": 0.999},
            "eps 1e-6": {"optim.eps": 1e-6},
            "beta2 0.999, eps 1e-6": {"optim.beta2": 0.999, "optim.eps": 1e-6},
        },
    ),
    Sweep(
        name="batch_size", section="training", axis="batch size, with and without ramp",
        variants={
            "batch 0.25x": _batch_times(0.25),
            "batch 0.5x": _batch_times(0.5),
            "batch 2x": _batch_times(2),
            "batch 4x": _batch_times(4),
            "no ramp": {"train.batch_ramp": 0.0},
            "ramp to p=0.6": {"train.batch_ramp": 0.6},
            "batch 4x, no ramp": {**_batch_times(4), "train.batch_ramp": 0.0},
            "batch 4x, ramp to p=0.6": {**_batch_times(4), "train.batch_ramp": 0.6},
        },
        note="sizes are relative to the preset's batch; paper: ~1.5k sequences best for loss at 24 h",
    ),
    Sweep(
        name="masking", section="training", axis="masking rate and 80/10/10", cost_per_token_varies=True,
        variants={
            "mask 15%": {"objective.mask_rate": 0.15},
            "mask 40%": {"objective.mask_rate": 0.40},
            "mask 60%": {"objective.mask_rate": 0.60},
            "all [MASK] (no 80/10/10)": {"objective.split_80_10_10": False},
        },
        note="eval loss always uses the same fixed 15% masking, so rates are comparable",
    ),
    Sweep(
        name="mlm_loss", section="training", axis="MLM loss",
        variants={
            "MSE": {"objective.loss": "mse"},
            "L1": {"objective.loss": "l1"},
            "focal": {"objective.loss": "focal"},
            "z-loss 1e-4": {"objective.z_loss": 1e-4},
        },
    ),
    Sweep(
        name="dropout", section="training", axis="dropout in pretraining",
        variants={
            "dropout 0.1": {"model.dropout": 0.1, "model.attention_dropout": 0.1},
            "dropout 0.1, no attention dropout": {"model.dropout": 0.1},
        },
        note="paper: off is better (more updates per second; one epoch does not overfit)",
    ),
    Sweep(
        name="gradient_clipping", section="training", axis="global gradient-norm clipping",
        variants={
            "no clipping": {"optim.grad_clip": 0.0},
            "clip 0.25": {"optim.grad_clip": 0.25},
            "clip 1.0": {"optim.grad_clip": 1.0},
        },
    ),
    Sweep(
        name="curriculum", section="training", axis="sequence-length curriculum, token dropping",
        cost_per_token_varies=True,
        variants={
            "length curriculum": {"train.seq_len_curriculum": Derived("L/4 until p=0.25, L/2 until 0.5", _curriculum)},
            "token drop 10%": {"objective.token_drop": 0.1},
            "token drop 25%": {"objective.token_drop": 0.25},
        },
    ),
    Sweep(
        name="weight_averaging", section="training", axis="weight averaging (evaluated at the end)",
        variants={
            "EMA 0.99": {"train.averaging": "ema", "train.ema_decay": 0.99},
            "EMA 0.999": {"train.averaging": "ema", "train.ema_decay": 0.999},
            "LAWA": {"train.averaging": "lawa"},
        },
    ),
    # ---- architecture
    Sweep(
        name="model_shape", section="architecture", axis="depth / width at a fixed budget",
        variants={
            "half depth": {"model.num_layers": scaled("model.num_layers", 0.5)},
            "double depth": {"model.num_layers": scaled("model.num_layers", 2)},
            "half width": {"model.hidden_size": scaled("model.hidden_size", 0.5),
                           "model.ffn_size": scaled("model.ffn_size", 0.5)},
            "double width": {"model.hidden_size": scaled("model.hidden_size", 2),
                             "model.ffn_size": scaled("model.ffn_size", 2)},
            "half the heads": {"model.num_heads": scaled("model.num_heads", 0.5)},
        },
        note="paper: loss per token depends on size, not shape",
    ),
    Sweep(
        name="attention_bias", section="architecture", axis="QKV bias",
        variants={"QKV bias": {"model.qkv_bias": True}},
    ),
    Sweep(
        name="linear_bias", section="architecture", axis="biases in linear layers",
        variants={
            "linear biases": {"model.linear_bias": True},
            "all biases": {"model.qkv_bias": True, "model.linear_bias": True, "model.decoder_bias": True},
        },
    ),
    Sweep(
        name="mlp", section="architecture", axis="MLP gating and activation",
        variants={
            "plain MLP (GELU)": {"model.mlp": "plain"},
            "plain MLP (ReLU)": {"model.mlp": "plain", "model.activation": "relu"},
            "GLU with ReLU": {"model.activation": "relu"},
            "GLU with SiLU (SwiGLU)": {"model.activation": "silu"},
            "GLU with tanh-GELU": {"model.activation": "gelu-tanh"},
            "GLU with squared ReLU": {"model.activation": "sqrelu"},
        },
    ),
    Sweep(
        name="norm_placement", section="architecture", axis="norm placement",
        variants={
            "post-LN": {"model.norm_scheme": "post", "model.final_norm": False},
            "post-LN, 10% warm-up": {"model.norm_scheme": "post", "model.final_norm": False, "train.warmup": 0.1},
            "sandwich": {"model.norm_scheme": "sandwich"},
            "pre-LN, no final norm": {"model.final_norm": False},
        },
        note="paper: pre-LN's gain is that it tolerates a larger LR and little warm-up",
    ),
    Sweep(
        name="norm_type", section="architecture", axis="norm type and epsilon",
        variants={
            "RMSNorm": {"model.norm": "rmsnorm"},
            "eps 1e-6": {"model.norm_eps": 1e-6},
        },
    ),
    Sweep(
        name="position_embeddings", section="architecture", axis="position embedding",
        variants={
            "learned": {"model.position_embedding": "learned"},
            "sinusoidal": {"model.position_embedding": "sinusoidal"},
            "rotary": {"model.position_embedding": "rotary"},
            "none": {"model.position_embedding": "none"},
        },
        note="baseline = scaled sinusoidal",
    ),
    Sweep(
        name="embeddings", section="architecture", axis="embedding norm, tying, factorisation",
        variants={
            "no embedding norm": {"model.embedding_norm": False},
            "untied": {"model.tie_embeddings": False},
            "factorised (1/4 width)": {"model.embedding_size": scaled("model.hidden_size", 0.25)},
        },
    ),
    Sweep(
        name="head", section="architecture", axis="MLM head",
        variants={
            "head transform": {"model.head_transform": True},
            "decoder bias": {"model.decoder_bias": True},
            "dense prediction": {"model.sparse_prediction": False},
        },
        note="dense prediction computes the same loss on more positions' logits: only speed should change",
    ),
    Sweep(
        name="attention_type", section="architecture", axis="token mixing",
        variants={"FNet (Fourier)": {"model.attention": "fourier"}},
    ),
    Sweep(
        name="layer_drop", section="architecture", axis="stochastic depth, FFN frequency",
        variants={
            "layer drop 0.1": {"model.layer_drop": 0.1},
            "FFN every 2nd block": {"model.ffn_every": 2},
        },
    ),
    Sweep(
        name="init", section="architecture", axis="weight init",
        variants={
            "small init": {"model.init": "small"},
            "scaled init": {"model.init": "scaled"},
        },
    ),
    # ---- data
    Sweep(
        name="tokenizer", section="data", axis="tokenizer kind and vocabulary size", cost_per_token_varies=True,
        variants={
            "BPE": {"data.tokenizer": "bpe"},
            "Unigram": {"data.tokenizer": "unigram"},
            "vocab 0.5x": {"data.vocab_size": scaled("data.vocab_size", 0.5, minimum=64)},
            "vocab 2x": {"data.vocab_size": scaled("data.vocab_size", 2, minimum=64)},
        },
    ),
    Sweep(
        name="data_filtering", section="data", axis="compressibility filter, deduplication",
        variants={
            "no filter": {"data.compressibility": None},
            "filter t=0.2": {"data.compressibility": 0.2},
            "filter t=0.3": {"data.compressibility": 0.3},
            "exact dedup": {"data.dedup": "exact"},
            "substring dedup (50 tokens)": {"data.dedup": "substring", "data.dedup_min_tokens": 50},
        },
    ),
    Sweep(
        name="data_ordering", section="data", axis="document order",
        variants={
            "random": {"data.ordering": "random"},
            "likely unigrams first": {"data.ordering": "unigram-likely-first"},
            "likely unigrams last": {"data.ordering": "unigram-likely-last"},
            "by fragment count": {"data.ordering": "fragment-count"},
            "as read": {"data.ordering": "none"},
        },
        note="baseline = sorted by sentence count (descending)",
    ),
    Sweep(
        name="separators", section="data", axis="<sep> between documents, <cls> at the start",
        variants={
            "no <sep>": {"data.add_sep": False},
            "with <cls>": {"data.add_cls": True},
        },
    ),
    # ---- the group ablation (paper Table 5)
    Sweep(
        name="group_ablation", section="groups", axis="reset one group to original BERT",
        variants={
            "original BERT architecture": ARCHITECTURE_RESET,
            "original BERT training": TRAINING_RESET,
            "original BERT data": DATA_RESET,
            "original BERT (all three)": {**ARCHITECTURE_RESET, **TRAINING_RESET, **DATA_RESET},
        },
        note="model shape and batch size stay the preset's, so each row measures the recipe, not the size",
    ),
]

SWEEPS: dict[str, Sweep] = {s.name: s for s in _SWEEP_LIST}


def get_sweep(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ConfigError(unknown_name("sweep", name, SWEEPS, listed="python -m sweeps list"))
    return SWEEPS[name]


def check_registry() -> None:
    """Internal invariant: every preset name a sweep budgets for exists."""
    for s in SWEEPS.values():
        for preset in s.budgets:
            assert preset in PRESETS, f"{s.name}: unknown preset {preset!r} in budgets"
