"""Configuration: one frozen, kw-only dataclass per group, CLI overrides ``group.field=value``.

Every field carries a one-line docstring (the string literal right after it); ``--list-flags`` prints
them. Groups are passed to the component that owns them only (the model never sees the optimizer).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from cram_core.cli import nearest, unknown_name

Activation = Literal["gelu", "gelu-tanh", "relu", "silu", "leaky-relu", "sqrelu"]


class ConfigError(ValueError):
    """A user mistake in a config value or override; the message is one line and lists valid choices."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _in_unit(name: str, value: float, *, closed_right: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    _check(ok, f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    num_layers: int = 16
    "number of transformer blocks"
    hidden_size: int = 768
    "width of the residual stream"
    num_heads: int = 12
    "attention heads (hidden_size must divide evenly)"
    ffn_size: int = 3072
    "inner width of the MLP; with mlp=glu it is split into value and gate halves (no extra parameters)"
    max_seq_len: int = 128
    "longest sequence the position embedding supports"
    qkv_bias: bool = False
    "bias on the query/key/value projection"
    linear_bias: bool = False
    "bias on every other linear layer (attention output, MLP, head transform)"
    decoder_bias: bool = False
    "bias on the output (decoder) embedding"
    mlp: Literal["plain", "glu"] = "glu"
    "plain MLP or gated linear unit"
    activation: Activation = "gelu"
    "MLP activation (inside the gate for mlp=glu)"
    norm_scheme: Literal["pre", "post", "sandwich"] = "pre"
    "norm placement: pre-LN, post-LN (original BERT) or sandwich (pre and post)"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    "normalisation layer type"
    norm_eps: float = 1e-12
    "epsilon of every norm layer"
    final_norm: bool = True
    "norm after the last block, under every norm_scheme (with post-LN it re-normalises the last block's output: a learned affine map)"
    embedding_norm: bool = True
    "norm right after the embeddings"
    position_embedding: Literal["learned", "sinusoidal", "scaled-sinusoidal", "rotary", "none"] = (
        "scaled-sinusoidal"
    )
    "position information: learned table, fixed sinusoid, sinusoid x learned scalar, rotary, none"
    tie_embeddings: bool = True
    "share the input embedding matrix with the output decoder"
    embedding_size: int | None = None
    "factorised (ALBERT) embedding width; none = hidden_size"
    head_transform: bool = False
    "dense + activation + norm before the decoder (original BERT MLM head)"
    sparse_prediction: bool = True
    "run the MLM head and loss only at masked positions"
    attention: Literal["softmax", "fourier"] = "softmax"
    "token mixing: softmax attention (SDPA) or FNet Fourier transform"
    layer_drop: float = 0.0
    "stochastic-depth rate: probability of skipping a block per step (training only)"
    ffn_every: int = 1
    "MLP in every k-th block only (1 = every block; at most num_layers, so one block keeps its MLP)"
    dropout: float = 0.0
    "dropout on embeddings, attention output and MLP output"
    attention_dropout: float = 0.0
    "dropout on attention probabilities"
    init: Literal["normal", "small", "scaled"] = "normal"
    "weight init: normal(std), small (std=sqrt(2/(5*hidden))), scaled (output projections / sqrt(2*layers))"
    init_std: float = 0.02
    "standard deviation for init=normal and init=scaled"

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_size", "max_seq_len", "ffn_every"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.ffn_every <= self.num_layers,
               f"model.ffn_every ({self.ffn_every}) must be <= model.num_layers ({self.num_layers}); "
               "larger leaves no block with an MLP")
        _check(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})",
        )
        _check(self.mlp != "glu" or self.ffn_size % 2 == 0, "model.ffn_size must be even for mlp=glu")
        _check(
            self.position_embedding != "rotary" or (self.hidden_size // self.num_heads) % 2 == 0,
            "rotary position embedding needs an even head dimension",
        )
        _check(self.embedding_size is None or self.embedding_size >= 1, "model.embedding_size must be >= 1")
        for name in ("layer_drop", "dropout", "attention_dropout"):
            _in_unit(f"model.{name}", getattr(self, name))
        _check(self.norm_eps > 0 and self.init_std > 0, "model.norm_eps and model.init_std must be > 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveConfig:
    mask_rate: float = 0.25
    "fraction of tokens selected for prediction (an exact count per sequence)"
    split_80_10_10: bool = True
    "of selected tokens, 80% become <mask>, 10% random, 10% unchanged; off = all <mask>"
    loss: Literal["cross-entropy", "mse", "l1", "mse-prob", "l1-prob", "focal"] = "cross-entropy"
    "MLM loss: cross-entropy; mse / l1 = the paper's, logits regressed onto target_scale x one-hot; mse-prob / l1-prob = softmax vs one-hot (Brier, MAE); focal"
    target_scale: float | None = None
    "height of the one-hot target for loss=mse / l1; none = the paper code's: sqrt(V) for mse, V for l1"
    focal_gamma: float = 2.0
    "focusing exponent for loss=focal"
    z_loss: float = 0.0
    "weight of the z-loss term (mean squared log-partition); 0 = off"
    token_drop: float = 0.0
    "fraction of unselected tokens dropped from the input sequence (exact count); 0 = off"

    def __post_init__(self) -> None:
        _check(0.0 < self.mask_rate < 1.0, f"objective.mask_rate must be in (0, 1), got {self.mask_rate}")
        _in_unit("objective.token_drop", self.token_drop)
        _check(self.z_loss >= 0 and self.focal_gamma >= 0, "objective.z_loss and focal_gamma must be >= 0")
        _check(self.target_scale is None or self.target_scale > 0,
               f"objective.target_scale must be > 0 or none, got {self.target_scale}")


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    name: Literal["adamw", "adam", "radam", "sgd", "adafactor", "lion"] = "adamw"
    "base optimizer"
    wrapper: Literal["none", "lars", "sam"] = "none"
    "wrap the base optimizer: LARS (LARC scaling mode: each weight matrix's LR times its trust ratio, weight decay folded into the gradient), or SAM sharpness-aware two-step update"
    lr: float = 1e-3
    "peak learning rate"
    beta1: float = 0.9
    "first-moment decay (Adam family, Lion) / momentum for sgd"
    beta2: float = 0.98
    "second-moment decay (Adam family, Lion, Adafactor)"
    eps: float = 1e-12
    "Adam-family epsilon"
    weight_decay: float = 0.01
    "weight decay (decoupled for adamw/radam/lion/adafactor, L2 for adam/sgd); never on biases, norms or scalars"
    nesterov: bool = True
    "Nesterov momentum for sgd"
    grad_clip: float = 0.5
    "clip the global gradient L2 norm to this value; 0 = off"
    sam_rho: float = 0.05
    "SAM neighbourhood radius"
    lars_trust: float = 0.02
    "LARS trust coefficient: trust ratio = lars_trust * ||w|| / (||g|| + weight_decay * ||w||)"

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _in_unit("optim.beta1", self.beta1)
        _in_unit("optim.beta2", self.beta2)
        _check(self.eps > 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
               "optim.eps must be > 0, optim.weight_decay and optim.grad_clip >= 0")
        _check(self.sam_rho > 0 and self.lars_trust > 0, "optim.sam_rho and optim.lars_trust must be > 0")


Schedule = Literal[
    "constant", "linear", "cosine", "cosine-restarts", "inverse-sqrt", "one-cycle", "triangle",
    "ramp", "dive", "multi-cycle", "polynomial",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    schedule: Schedule = "triangle"
    "learning-rate shape as a function of budget progress p in [0, 1]"
    warmup: float = 0.0
    "fraction of the budget spent warming up linearly from 0 (applied on top of the shape)"
    cooldown: float = 0.0
    "fraction of the budget at the end spent decaying linearly to 0 (applied on top of the shape)"
    dive_at: float = 0.5
    "for schedule=dive: progress at which the constant phase turns into a linear decay"
    num_cycles: int = 4
    "cycles for cosine-restarts and multi-cycle"
    power: float = 2.0
    "exponent for schedule=polynomial"
    batch_size: int = 8192
    "sequences per optimizer step (at full ramp)"
    micro_batch_size: int = 128
    "sequences per forward/backward; batch_size must be a multiple of it"
    batch_ramp: float = 0.6
    "progress at which the batch reaches batch_size, growing linearly in micro-batch steps; 0 = no ramp"
    seq_len_curriculum: str = ""
    "sequence-length curriculum 'LEN:P,LEN:P' (use LEN until progress P, then the next); empty = off"
    averaging: Literal["none", "ema", "lawa"] = "none"
    "weight averaging evaluated at the end: exponential moving average or latest-weight averaging"
    ema_decay: float = 0.999
    "EMA decay per optimizer step, warmed up as min(decay, (1+t)/(10+t)) at step t so the init fades out"
    lawa_k: int = 6
    "LAWA: number of checkpoints averaged"
    lawa_every: float = 0.05
    "LAWA: progress between stored checkpoints"
    seed: int = 0
    "seed for init, masking and data order"
    log_every: int = 10
    "optimizer steps between metric records"
    eval_sequences: int = 256
    "held-out sequences for the final evaluation loss (fixed 15% masking, outside the budget)"
    mark_sequences: int = 128
    "held-out sequences read at a sweep trial's eval marks (evenly spaced among eval_sequences; the final eval reads all)"
    checkpoint_every: float = 0.0
    "progress between checkpoints (needs --out); 0 = only at the end"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1 and self.micro_batch_size >= 1, "train.batch_size and micro_batch_size must be >= 1")
        _check(
            self.batch_size % self.micro_batch_size == 0,
            f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({self.micro_batch_size})",
        )
        for name in ("warmup", "cooldown", "batch_ramp", "lawa_every", "checkpoint_every"):
            _in_unit(f"train.{name}", getattr(self, name), closed_right=True)
        _in_unit("train.dive_at", self.dive_at)
        _check(self.averaging != "lawa" or self.lawa_every > 0, "train.lawa_every must be > 0 for averaging=lawa")
        _check(self.warmup + self.cooldown <= 1.0, "train.warmup + train.cooldown must be <= 1")
        _check(self.num_cycles >= 1 and self.lawa_k >= 1 and self.log_every >= 1,
               "train.num_cycles, lawa_k and log_every must be >= 1")
        _in_unit("train.ema_decay", self.ema_decay)
        _check(self.power > 0 and self.eval_sequences >= 0, "train.power must be > 0, eval_sequences >= 0")
        _check(self.mark_sequences >= 1, f"train.mark_sequences must be >= 1, got {self.mark_sequences}")
        self.curriculum()  # validates the string

    def curriculum(self) -> list[tuple[int, float]]:
        """Parsed ``seq_len_curriculum``: [(length, until_progress), ...], progress increasing."""
        if not self.seq_len_curriculum.strip():
            return []
        stages = []
        for part in self.seq_len_curriculum.split(","):
            try:
                length_s, until_s = part.split(":")
                stages.append((int(length_s), float(until_s)))
            except ValueError:
                raise ConfigError(
                    f"train.seq_len_curriculum: bad stage {part!r}; expected 'LEN:P,LEN:P' e.g. '32:0.25,64:0.5'"
                ) from None
        untils = [u for _, u in stages]
        _check(all(0 < u <= 1 for u in untils) and untils == sorted(untils),
               "train.seq_len_curriculum: progress values must increase within (0, 1]")
        _check(all(n >= 2 for n, _ in stages), "train.seq_len_curriculum: lengths must be >= 2")
        return stages


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetConfig:
    seconds: float | None = None
    "training wall-clock budget in seconds (compile, warm-up and evaluation excluded)"
    tokens: float | None = None
    "training budget in tokens computed: input positions per forward+backward (token_drop: kept only; sam: 2 passes)"
    flops: float | None = None
    "training budget in estimated model FLOPs (forward + backward of the positions counted as tokens)"

    # Setting one kind from the command line clears the others (see apply_overrides).
    EXCLUSIVE = ("seconds", "tokens", "flops")

    def __post_init__(self) -> None:
        given = [(k, v) for k in self.EXCLUSIVE if (v := getattr(self, k)) is not None]
        _check(len(given) == 1, "budget: set exactly one of budget.seconds, budget.tokens, budget.flops")
        _check(given[0][1] > 0, f"budget.{given[0][0]} must be > 0")

    @property
    def kind(self) -> str:
        return next(k for k in self.EXCLUSIVE if getattr(self, k) is not None)

    @property
    def amount(self) -> float:
        return float(getattr(self, self.kind))


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    source: str = "sample"
    "corpus: 'sample' (bundled), hf:NAME[:CONFIG], text:GLOB, jsonl:GLOB, parquet:GLOB; mix with ',' and '@WEIGHT'"
    text_field: str = "text"
    "field holding the document text in jsonl/parquet/hf sources"
    max_documents: int | None = None
    "read at most this many documents (after mixing); none = all"
    tokenizer: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    "tokenizer model trained on the corpus"
    vocab_size: int = 32768
    "tokenizer vocabulary size, special tokens included (a tiny corpus may yield fewer)"
    lowercase: bool = True
    "lowercase text before tokenizing"
    strip_accents: bool = True
    "strip accents before tokenizing"
    nfkc: bool = False
    "apply NFKC unicode normalisation"
    compressibility: float | None = 0.25
    "keep a document iff tokens < t * characters (tokens of a 32768-entry reference tokenizer); none = off"
    dedup: Literal["none", "exact", "substring"] = "none"
    "remove exact duplicate documents, or also repeated substrings of dedup_min_tokens tokens"
    dedup_min_tokens: int = 50
    "minimum repeated-substring length (tokens) for dedup=substring"
    ordering: Literal[
        "random", "unigram-likely-first", "unigram-likely-last", "sentence-count", "fragment-count", "none"
    ] = "sentence-count"
    "document order before packing (random = seeded shuffle); the loader never reorders"
    max_sequences: int | None = None
    "keep only the first N packed sequences after ordering; none = all"
    seq_len: int = 128
    "tokens per packed training sequence"
    add_sep: bool = True
    "insert <sep> between packed documents"
    add_cls: bool = False
    "insert <cls> at the start of each document"
    seed: int = 0
    "seed for random ordering and mixing"
    cache_dir: str = ""
    "prepared-data cache; empty = $CRAM_CACHE or ~/.cache/cram_core"

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 64, f"data.vocab_size must be >= 64, got {self.vocab_size}")
        _check(self.seq_len >= 8, f"data.seq_len must be >= 8, got {self.seq_len}")
        _check(self.compressibility is None or self.compressibility > 0, "data.compressibility must be > 0 or none")
        _check(self.dedup_min_tokens >= 2, "data.dedup_min_tokens must be >= 2")
        _check(self.max_documents is None or self.max_documents >= 1, "data.max_documents must be >= 1")
        _check(self.max_sequences is None or self.max_sequences >= 1, "data.max_sequences must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ImplConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    "where to train; auto = cuda when available"
    precision: Literal["auto", "fp32", "bf16", "fp16", "fp8"] = "auto"
    "autocast precision; auto = bf16 on CUDA, fp32 on CPU; fp16 with loss scaling (not with sam); fp8 = torchao float8 linears in the blocks, bf16 elsewhere"
    compile: Literal["auto", "on", "off"] = "auto"
    "torch.compile the model; auto = on for CUDA"
    compile_mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"] = "default"
    "torch.compile mode"
    fused_optimizer: bool = True
    "use fused optimizer kernels where available (CUDA)"
    threads: int = 0
    "CPU threads for torch; 0 = torch default"
    residual_dtype: Literal["fp32", "autocast"] = "fp32"
    "dtype of the residual stream between blocks: fp32 (as HF BERT and cramming), or autocast's (bf16: half the bytes, rounded at every add)"

    def __post_init__(self) -> None:
        _check(self.threads >= 0, "impl.threads must be >= 0")
        _check(not (self.residual_dtype == "autocast" and self.precision == "fp32"),
               "impl.residual_dtype=autocast needs an autocast dtype and impl.precision=fp32 has none; "
               "valid with fp32: fp32")


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "budget": BudgetConfig,
    "data": DataConfig,
    "impl": ImplConfig,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(seconds=600.0))
    data: DataConfig = field(default_factory=DataConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)

    def __post_init__(self) -> None:
        _check(
            self.data.seq_len <= self.model.max_seq_len,
            f"data.seq_len ({self.data.seq_len}) must be <= model.max_seq_len ({self.model.max_seq_len})",
        )
        for length, _ in self.train.curriculum():
            _check(length <= self.data.seq_len, f"train.seq_len_curriculum length {length} exceeds data.seq_len")
        _check(not (self.impl.precision == "fp16" and self.optim.wrapper == "sam"),
               "impl.precision=fp16 can't be combined with optim.wrapper=sam (fp16 loss scaling can't step "
               "SAM's closure); valid with sam: auto, fp32, bf16")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {g: dataclasses.asdict(getattr(self, g)) for g in GROUPS}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]]) -> RunConfig:
        unknown = set(d) - set(GROUPS)
        _check(not unknown, f"unknown config group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}")
        return cls(**{g: GROUPS[g](**d.get(g, {})) for g in GROUPS})

    def hash(self) -> str:
        """Stable short hash of the resolved config without ``train.seed``: trials are keyed by (hash, seed).

        ``train.mark_sequences`` is left out too: it changes neither training nor the final held-out loss, only
        which sequences the intermediate marks read, so a store from before the field keeps its keys. For the
        same reason ``impl.residual_dtype`` is left out at fp32, the stream every trial had before the field."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("seed", "mark_sequences")}
        if d["impl"]["residual_dtype"] == "fp32":
            del d["impl"]["residual_dtype"]
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- field introspection and overrides


def field_docs(cls: type) -> dict[str, str]:
    """The docstring literal that follows each field in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if origin in (typing.Union, types.UnionType):
        return "|".join(_describe_type(a) for a in typing.get_args(tp))
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def parse_value(tp: Any, text: str, key: str) -> Any:
    """Parse ``text`` as type ``tp``; ConfigError naming ``key`` and the valid values otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(a, text, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: cannot parse {text!r} as {_describe_type(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if text in choices:
            return text
        raise ConfigError(f"{key}: {unknown_name('choice', text, choices)}")
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {text!r}")
        return int(value)
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {text!r}")
        return value
    if tp is str:
        return text
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # internal: a field type we forgot


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Return ``cfg`` with ``group.field=value`` overrides applied and validated.

    ``overrides`` is a list of ``"group.field=value"`` strings (CLI) or a dict ``{"group.field": value}``
    (sweep definitions; values may be typed already or strings).
    """
    items = _split_overrides(overrides)
    changes: dict[str, dict[str, Any]] = {}
    for key, raw in items:
        group, _, name = key.partition(".")
        if group not in GROUPS:
            close = nearest(key, [f"{g}.{f.name}" for g, c in GROUPS.items() for f in dataclasses.fields(c)])
            raise ConfigError(f"unknown flag {key!r}; did you mean {close!r}?" if close else
                              f"unknown config group {group!r} in {key!r}; valid groups: {', '.join(GROUPS)}")
        cls = GROUPS[group]
        hints = _field_types(cls)
        if name not in hints or name.isupper():
            fields = [f.name for f in dataclasses.fields(cls)]
            close = nearest(name, fields)  # the field part only: every flag of the group shares its prefix
            raise ConfigError(f"unknown flag {key!r}; " + (f"did you mean '{group}.{close}'?" if close else
                                                            f"valid {group} flags: {', '.join(f'{group}.{f}' for f in fields)}"))
        value = parse_value(hints[name], raw, key) if isinstance(raw, str) else _check_typed(hints[name], raw, key)
        group_changes = changes.setdefault(group, {})
        exclusive = getattr(cls, "EXCLUSIVE", ())
        if name in exclusive:
            for other in exclusive:
                group_changes.setdefault(other, None)
        group_changes[name] = value
    new = {g: dataclasses.replace(getattr(cfg, g), **ch) for g, ch in changes.items()}
    return dataclasses.replace(cfg, **new)


def _split_overrides(overrides: list[str] | dict[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    items = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}; expected group.field=value (see --list-flags)")
        items.append((key.strip(), raw))
    return items


def _check_typed(tp: Any, value: Any, key: str) -> Any:
    """Validate an already-typed value (from Python sweep definitions) by round-tripping through text."""
    if value is None:
        return parse_value(tp, "none", key)
    if isinstance(value, bool):
        return parse_value(tp, str(value).lower(), key)
    return parse_value(tp, repr(value) if isinstance(value, float) else str(value), key)


def list_flags(defaults: RunConfig | None = None) -> list[str]:
    """One line per flag: ``group.field  type  default=...  doc``, in columns aligned across every group; the
    defaults are ``defaults``' values (a preset's), else the dataclasses' own. A choice's valid values open
    its doc, so that their length doesn't widen the type column."""
    defaults = defaults or RunConfig()
    rows = []
    for group, cls in GROUPS.items():
        docs = field_docs(cls)
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            tp, doc = hints[f.name], docs.get(f.name, "")
            default = getattr(getattr(defaults, group), f.name)
            is_choice = typing.get_origin(tp) is Literal
            rows.append((f"{group}.{f.name}", "choice" if is_choice else _describe_type(tp), f"default={default!s}",
                         f"{_describe_type(tp)} {doc}" if is_choice else doc))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {doc}".rstrip()
            for name, kind, default, doc in rows]
