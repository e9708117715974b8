"""Downstream tasks on disk: ``<root>/<task>/task.json`` plus train/dev jsonl files (``.xz`` transparently)."""

from __future__ import annotations

import json
import lzma
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cram_core.downstream.metrics import REGRESSION_METRICS, get_metric
from cram_core.downstream.errors import DownstreamError

DEFAULT_DATA_ROOT = "../shared/data/eval"
DATA_ROOT_ENV = "CRAM_EVAL_DATA"


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
        candidates = [Path.cwd() / DEFAULT_DATA_ROOT, Path(__file__).resolve().parents[3] / "shared" / "data" / "eval"]
    for path in candidates:
        if path.is_dir():
            return path
    raise DownstreamError(f"eval data root not found (tried {', '.join(map(str, candidates))}); "
                          f"pass {flag} DIR or set {DATA_ROOT_ENV}")


def list_tasks(data_root: str | Path) -> list[str]:
    return sorted(p.parent.name for p in Path(data_root).glob("*/task.json"))
