"""Downstream fine-tuning of a finished pretraining run under the "GLUE sane" protocol (ABLATIONS.md).

A run directory (``python -m cram_core.train --out DIR``) holds model.safetensors, config.json and
tokenizer.json. Every task is fine-tuned from those weights once per seed and scored on its dev split after
the last epoch. Per-seed records are the primary output: the median over seeds (the paper's figure) is also
computed here for convenience, but analysis should keep the individual values.

Metric values are fractions (accuracy 0.87, not 87); matthews_corr and pearson lie in [-1, 1].

    python -m cram_core.downstream RUN_DIR --tasks rt-polarity,sva --seeds 5
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cram_core.checkpoint import load_model_weights
from cram_core.cli import OneLineParser, positive_int, run_main, unknown_name
from cram_core.config import ConfigError, RunConfig
from cram_core.model import build_model

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_LENGTH = 128
DEFAULT_DATA_ROOT = "../shared/data/eval"
DATA_ROOT_ENV = "CRAM_EVAL_DATA"
WEIGHT_FILES = {"model": "model.safetensors", "averaged": "model-averaged.safetensors"}


class DownstreamError(ValueError):
    """A user mistake (missing run files, unknown task or metric, malformed data); the message is one line."""


# -------------------------------------------------------------------------------------------- metrics


def _arrays(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be equal-length 1-D arrays")
    if len(y) == 0:
        raise ValueError("cannot score an empty set of predictions")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    p, y = _arrays(predictions, labels)
    return float(np.mean(p == y))


def matthews_corr(predictions: Any, labels: Any) -> float:
    """Multi-class MCC (Gorodkin 2004), equal to the usual binary formula for two classes.

    A degenerate confusion matrix (one class predicted or present only) scores 0, as sklearn does, so a
    majority-class predictor lands at chance instead of producing NaN.
    """
    p, y = _arrays(predictions, labels)
    classes, inverse = np.unique(np.concatenate([p, y]), return_inverse=True)
    k, n = len(classes), len(y)
    confusion = np.zeros((k, k), dtype=np.float64)  # float: the products below overflow int64 on big sets
    np.add.at(confusion, (inverse[n:], inverse[:n]), 1.0)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), float(n)
    denom = math.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - q @ t) / denom) if denom > 0 else 0.0


def f1(predictions: Any, labels: Any) -> float:
    """Binary F1 of the positive class 1 (GLUE MRPC/QQP convention); 0 when there are no positives at all."""
    p, y = _arrays(predictions, labels)
    tp = float(np.sum((p == 1) & (y == 1)))
    fp = float(np.sum((p == 1) & (y != 1)))
    fn = float(np.sum((p != 1) & (y == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def _correlation(kind: str, predictions: Any, labels: Any) -> float:
    from scipy import stats

    p, y = _arrays(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    # a constant predictor (a collapsed regression head) carries no correlation; scipy would say NaN
    if len(y) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    result = stats.pearsonr(p, y) if kind == "pearson" else stats.spearmanr(p, y)
    return float(result.statistic)


def pearson(predictions: Any, labels: Any) -> float:
    return _correlation("pearson", predictions, labels)


def spearman(predictions: Any, labels: Any) -> float:
    return _correlation("spearman", predictions, labels)


METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "matthews_corr": matthews_corr,
    "f1": f1,
    "pearson": pearson,
    "spearman": spearman,
}
REGRESSION_METRICS = frozenset({"pearson", "spearman"})


def get_metric(name: str) -> Callable[[Any, Any], float]:
    if name not in METRICS:
        raise DownstreamError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return METRICS[name]


# ---------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Split:
    texts: list[tuple[str, ...]]
    "one tuple per example, one string per text field (1 = single sentence, 2 = pair)"
    labels: list[Any]
    "class ids (int) or regression targets (float)"

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Task:
    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    metric: str
    train: Split
    dev: Split

    @property
    def regression(self) -> bool:
        return self.metric in REGRESSION_METRICS

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names)


def _split_path(task_dir: Path, meta: dict[str, Any], split: str) -> Path:
    named = (meta.get("files") or {}).get(split)
    candidates = [named] if named else [f"{split}.jsonl", f"{split}.jsonl.xz"]
    for name in candidates:
        if (task_dir / name).is_file():
            return task_dir / name
    raise DownstreamError(f"{task_dir}: no {split} file (looked for {', '.join(candidates)})")


def _read_lines(path: Path) -> list[str]:
    opener = lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return [line for line in fh if line.strip()]
    except (OSError, lzma.LZMAError, UnicodeDecodeError) as e:
        raise DownstreamError(f"{path}: cannot read ({e})") from None


def _cap(lines: list[str], cap: int | None, rng: np.random.Generator) -> list[str]:
    if cap is None or cap >= len(lines):
        return lines
    return [lines[i] for i in rng.permutation(len(lines))[:cap]]


def _parse(lines: list[str], path: Path, fields: tuple[str, ...], label_field: str,
           label_names: tuple[str, ...], regression: bool) -> Split:
    by_name = {name: i for i, name in enumerate(label_names)}
    texts, labels = [], []
    for line in lines:
        try:
            row = json.loads(line)
            text = tuple(str(row[f]) for f in fields)
            raw = row[label_field]
        except json.JSONDecodeError as e:
            raise DownstreamError(f"{path}: a line is not valid JSON ({e.msg})") from None
        except (KeyError, TypeError) as e:
            raise DownstreamError(f"{path}: a row lacks field {e}; expected {', '.join(fields + (label_field,))}") from None
        if regression:
            label: Any = float(raw)
        elif isinstance(raw, str) and raw in by_name:
            label = by_name[raw]
        elif isinstance(raw, (int, float)) and float(raw).is_integer() and 0 <= int(raw) < len(label_names):
            label = int(raw)
        else:
            raise DownstreamError(f"{path}: label {raw!r} is not one of 0..{len(label_names) - 1} or {list(label_names)}")
        texts.append(text)
        labels.append(label)
    return Split(texts, labels)


def load_task(task_dir: str | Path, *, max_train: int | None = None, max_dev: int | None = None,
              seed: int = 0) -> Task:
    """Read ``task.json`` and the train/dev jsonl files (``.xz`` transparently).

    ``max_train`` / ``max_dev`` keep the first N examples after a shuffle seeded by ``seed``; the subset is a
    property of the evaluation, not of the fine-tuning seed, so every seed sees the same examples.
    """
    task_dir = Path(task_dir)
    meta_path = task_dir / "task.json"
    if not meta_path.is_file():
        raise DownstreamError(f"{task_dir}: no task.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DownstreamError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for cap_name, cap in (("max_train", max_train), ("max_dev", max_dev)):
        if cap is not None and cap < 1:
            raise DownstreamError(f"{cap_name} must be >= 1, got {cap}")

    fields = tuple(meta.get("text_fields") or ())
    if not 1 <= len(fields) <= 2:
        raise DownstreamError(f"{meta_path}: text_fields must list one or two fields, got {list(fields)}")
    metric = str(meta.get("metric", ""))
    get_metric(metric)
    regression = metric in REGRESSION_METRICS
    label_names = tuple(str(x) for x in meta.get("labels") or ())
    if not regression and len(label_names) < 2:
        raise DownstreamError(f"{meta_path}: a classification task needs at least two entries in labels")
    label_field = str(meta.get("label_field", "label"))

    splits = {}
    for i, (split, cap) in enumerate((("train", max_train), ("dev", max_dev))):
        path = _split_path(task_dir, meta, split)
        # independent streams per split so capping dev does not change which train examples are kept
        lines = _cap(_read_lines(path), cap, np.random.default_rng([seed, i]))
        if not lines:
            raise DownstreamError(f"{path}: no examples")
        splits[split] = _parse(lines, path, fields, label_field, label_names, regression)
    return Task(str(meta.get("name") or task_dir.name), fields, label_names, metric, splits["train"], splits["dev"])


def resolve_data_root(data_root: str | Path | None = None, *, flag: str = "--data-root") -> Path:
    """Explicit argument, else $CRAM_EVAL_DATA, else ../shared/data/eval from the cwd or from the checkout.
    `flag` is the option that sets it in the calling CLI (named in the error)."""
    if data_root is not None:
        candidates = [Path(data_root)]
    elif os.environ.get(DATA_ROOT_ENV):
        candidates = [Path(os.environ[DATA_ROOT_ENV])]
    else:
        # the checkout-relative fallback lets the CLI work from any cwd inside a standard layout
        candidates = [Path.cwd() / DEFAULT_DATA_ROOT, Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"]
    for path in candidates:
        if path.is_dir():
            return path
    raise DownstreamError(f"eval data root not found (tried {', '.join(map(str, candidates))}); "
                          f"pass {flag} DIR or set {DATA_ROOT_ENV}")


def list_tasks(data_root: str | Path) -> list[str]:
    return sorted(p.parent.name for p in Path(data_root).glob("*/task.json"))


# ------------------------------------------------------------------------------------------- encoding


class PairEncoder:
    """``[CLS] a [SEP] (b [SEP])`` from the run's tokenizer, truncated longest-first to ``max_length``."""

    def __init__(self, tokenizer_path: str | Path, max_length: int = MAX_LENGTH):
        from tokenizers import Tokenizer

        if max_length < 3:
            raise DownstreamError(f"max_length must be >= 3, got {max_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # the pretraining tokenizer may carry its own template, truncation or padding; the layout is ours
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        for expected, token in enumerate(SPECIAL_TOKENS):
            found = self.tokenizer.token_to_id(token)
            if found is not None and found != expected:
                raise DownstreamError(f"{tokenizer_path}: {token} has id {found}, the model expects {expected}")
        self.max_length = max_length

    def encode(self, texts: Sequence[tuple[str, ...]]) -> list[list[int]]:
        if not texts:
            return []
        n_fields = len(texts[0])
        if n_fields + 1 > self.max_length or any(len(t) != n_fields for t in texts):
            raise DownstreamError(f"every example needs the same number of text fields (<= {self.max_length - 1})")
        columns = [self.tokenizer.encode_batch([t[k] for t in texts], add_special_tokens=False)
                   for k in range(n_fields)]
        return [self._join([col[i].ids for col in columns]) for i in range(len(texts))]

    def _join(self, pieces: list[list[int]]) -> list[int]:
        budget = self.max_length - 1 - len(pieces)
        lengths = [len(p) for p in pieces]
        if len(pieces) == 1:
            lengths = [min(lengths[0], budget)]
        else:
            # longest-first: shorten whichever piece is longer, one token at a time (ties: the later one)
            while sum(lengths) > budget:
                k = max(range(len(lengths)), key=lambda i: (lengths[i], i))
                lengths[k] -= 1
        ids = [CLS_ID]
        for piece, n in zip(pieces, lengths):
            ids.extend(piece[:n])
            ids.append(SEP_ID)
        return ids


def collate(sequences: Sequence[Sequence[int]], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with [PAD] to the longest sequence (or to ``pad_to``); the mask is True at real tokens."""
    longest = max([len(s) for s in sequences] + [pad_to or 0])
    ids = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return ids, mask


# -------------------------------------------------------------------------------------- pretrained run


@dataclass(frozen=True)
class PretrainedRun:
    path: Path
    config: RunConfig
    vocab_size: int
    tokenizer_path: Path
    weights_path: Path

    @property
    def max_length(self) -> int:
        # positions beyond what pretraining saw have no (trained) embedding
        return min(MAX_LENGTH, self.config.model.max_seq_len)

    @property
    def pad_to(self) -> int | None:
        # Fourier mixing cannot honour a mask, so a sequence's output would depend on its batch-mates'
        # lengths; a fixed length (as FNet does) keeps predictions independent of batching
        return self.max_length if self.config.model.attention == "fourier" else None


def load_run(run_dir: str | Path, *, weights: str = "auto") -> PretrainedRun:
    """Validate a run directory. ``weights``: model | averaged | auto (averaged when the run saved them,
    since that is the state the trainer's own held-out loss was measured on)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise DownstreamError(f"run directory {path} does not exist")
    if weights not in ("auto", *WEIGHT_FILES):
        raise DownstreamError(f"unknown weights choice {weights!r}; valid: auto, {', '.join(WEIGHT_FILES)}")
    if weights == "auto":
        weights = "averaged" if (path / WEIGHT_FILES["averaged"]).is_file() else "model"
    needed = ("config.json", "tokenizer.json", WEIGHT_FILES[weights])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise DownstreamError(f"run directory {path} lacks {', '.join(missing)} (not a finished training run?)")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        vocab_size = int(raw.pop("vocab_size"))
        config = RunConfig.from_dict(raw)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
        raise DownstreamError(f"{path / 'config.json'}: not a usable run config ({e})") from None
    return PretrainedRun(path, config, vocab_size, path / "tokenizer.json", path / WEIGHT_FILES[weights])


class SequenceClassifier(nn.Module):
    """Pretrained encoder + BERT pooler (first token -> dense -> tanh) -> dropout -> linear."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, *, dropout: float = 0.1,
                 init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = encoder
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)
        with torch.no_grad():
            for layer in (self.pooler, self.head):
                layer.weight.normal_(0.0, init_std, generator=generator)
                layer.bias.zero_()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask=attention_mask)
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(input_ids, attention_mask)))


def build_classifier(run: PretrainedRun, num_labels: int, *, dropout: float = 0.1, seed: int = 0) -> SequenceClassifier:
    """Encoder with the pretrained weights; dropout is on for fine-tuning even though pretraining ran
    without it (protocol), and layer drop is off (it is a pretraining regulariser only)."""
    model_cfg = dataclasses.replace(run.config.model, dropout=dropout, attention_dropout=dropout, layer_drop=0.0)
    encoder = build_model(model_cfg, run.vocab_size)
    try:
        load_model_weights(encoder, run.weights_path)
    except (ValueError, RuntimeError) as e:
        raise DownstreamError(f"{run.weights_path}: weights do not fit the config ({str(e).splitlines()[0]})") from None
    generator = torch.Generator().manual_seed(seed)
    return SequenceClassifier(encoder, model_cfg.hidden_size, num_labels, dropout=dropout,
                              init_std=model_cfg.init_std, generator=generator)


# ------------------------------------------------------------------------------------------- training


def lr_factor(step: int, total_steps: int, warmup: float = 0.1) -> float:
    """Multiplier of the peak LR for the update with 0-based index ``step``: linear warm-up over the first
    ``warmup`` fraction of updates, then cosine decay towards 0 at ``total_steps``."""
    warm = int(round(warmup * total_steps))
    if step < warm:
        return (step + 1) / warm  # (step + 1): the first update is not wasted at LR 0
    if total_steps <= warm:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total_steps - warm)))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DownstreamError("device cuda requested but CUDA is not available; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise DownstreamError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def _autocast(device: torch.device):
    # bf16 on GPUs as in pretraining; CPU bf16 autocast is slower than fp32 on most CPUs
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: SequenceClassifier, sequences: Sequence[Sequence[int]], *, regression: bool,
            batch_size: int = 64, pad_to: int | None = None) -> np.ndarray:
    """Class ids (or regression outputs) in input order. Batches are formed by length to waste little
    compute on padding, which is safe because the encoder masks pad tokens."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.empty(len(sequences), dtype=np.float64 if regression else np.int64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = collate([sequences[i] for i in idx], pad_to)
        with _autocast(device):
            logits = model(ids.to(device), mask.to(device)).float()
        values = logits[:, 0] if regression else logits.argmax(dim=-1)
        out[idx] = values.cpu().numpy()
    return out


def finetune(run: PretrainedRun, task: Task, *, seed: int = 0, epochs: int = 5, batch_size: int = 16,
             lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
             weight_decay: float = 0.0, warmup: float = 0.1, dropout: float = 0.1, device: str = "auto",
             encoded: tuple[list[list[int]], list[list[int]]] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune a fresh copy of the pretrained encoder on ``task.train``; score ``task.dev`` after the last epoch.

    ``encoded`` = (train ids, dev ids) from :class:`PairEncoder` lets several seeds share one tokenisation.
    """
    if epochs < 1 or batch_size < 1:
        raise DownstreamError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not 0.0 <= warmup <= 1.0:
        raise DownstreamError(f"warmup must be in [0, 1], got {warmup}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    if encoded is None:
        encoder = PairEncoder(run.tokenizer_path, run.max_length)
        encoded = (encoder.encode(task.train.texts), encoder.encode(task.dev.texts))
    train_ids, dev_ids = encoded

    # forked so that seeding dropout here leaves the caller's RNG streams untouched
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model, last_loss = _train(run, task, train_ids, dev, seed=seed, epochs=epochs, batch_size=batch_size,
                                  lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup=warmup,
                                  dropout=dropout, log=log, t0=t0)
    predictions = predict(model, dev_ids, regression=task.regression, pad_to=run.pad_to)
    value = get_metric(task.metric)(predictions, np.asarray(task.dev.labels))
    return {
        "task": task.name,
        "metric": task.metric,
        "value": value,
        "seed": seed,
        "train_loss": last_loss,
        "n_train": len(train_ids),
        "n_dev": len(dev_ids),
        "epochs": epochs,
        "max_length": run.max_length,
        "seconds": time.perf_counter() - t0,
        "weights": run.weights_path.name,
    }


def _train(run: PretrainedRun, task: Task, train_ids: list[list[int]], dev: torch.device, *, seed: int,
           epochs: int, batch_size: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
           warmup: float, dropout: float, log: Callable[[str], None] | None, t0: float) -> tuple[SequenceClassifier, float]:
    model = build_classifier(run, task.num_labels, dropout=dropout, seed=seed).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    targets = torch.tensor(task.train.labels, dtype=torch.float32 if task.regression else torch.long)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(train_ids)
    total_steps = epochs * math.ceil(n / batch_size)
    step, last_loss = 0, float("nan")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=order_gen)
        loss_sum = torch.zeros((), device=dev)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            ids, mask = collate([train_ids[i] for i in idx.tolist()], run.pad_to)
            y = targets[idx].to(dev)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, total_steps, warmup)
            with _autocast(dev):
                logits = model(ids.to(dev), mask.to(dev)).float()
            loss = F.mse_loss(logits[:, 0], y) if task.regression else F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
        last_loss = float(loss_sum) / n
        if log:
            log(f"{task.name} seed {seed} epoch {epoch + 1}/{epochs}: train loss {last_loss:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    return model, last_loss


def evaluate_run(run_dir: str | Path, tasks: Sequence[str], *, data_root: str | Path | None = None,
                 seeds: int | Iterable[int] = 1, epochs: int = 5, max_train: int | None = None,
                 max_dev: int | None = None, device: str = "auto", batch_size: int = 16, lr: float = 4e-5,
                 warmup: float = 0.1, weights: str = "auto",
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Fine-tune ``run_dir`` on each task for each seed; one record per (task, seed):
    ``task, metric, value, seed`` plus ``train_loss, n_train, n_dev, epochs, max_length, seconds, weights``.

    ``seeds`` is a count (seeds 0..N-1) or explicit seeds. Everything is validated (run files, task names,
    task files) before any fine-tuning starts, so a typo fails in seconds, not after the first task.
    """
    run = load_run(run_dir, weights=weights)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise DownstreamError("need at least one fine-tuning seed")
    names = list(dict.fromkeys(tasks))
    if not names:
        raise DownstreamError("no tasks given")
    root = resolve_data_root(data_root)
    available = list_tasks(root)
    unknown = [t for t in names if t not in available]
    if unknown:
        raise DownstreamError(f"{unknown_name('task', unknown[0], available)} (tasks in {root})")
    resolve_device(device)
    loaded = [load_task(root / name, max_train=max_train, max_dev=max_dev) for name in names]

    encoder = PairEncoder(run.tokenizer_path, run.max_length)
    results = []
    for name, task in zip(names, loaded):
        encoded = (encoder.encode(task.train.texts), encoder.encode(task.dev.texts))
        for seed in seed_list:
            record = finetune(run, task, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup,
                              device=device, encoded=encoded, log=log)
            record["task"] = name  # the directory name is what the caller asked for
            results.append(record)
    return results


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: metric, the median over seeds (the paper's reported figure), and the individual values."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = out.setdefault(r["task"], {"metric": r["metric"], "values": [], "seeds": []})
        entry["values"].append(r["value"])
        entry["seeds"].append(r["seed"])
    for entry in out.values():
        entry["median"] = statistics.median(entry["values"])
    return out


# ------------------------------------------------------------------------------------------------ CLI


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
    parser = OneLineParser(
        prog="python -m cram_core.downstream",
        description="Fine-tune a finished training run on eval tasks (GLUE-sane protocol) and print dev scores.",
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
                               weights=args.weights, log=log)
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


if __name__ == "__main__":
    run_main(main)
