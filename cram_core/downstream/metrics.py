"""Dev-set metrics of the downstream tasks, as fractions (accuracy 0.87, not 87); matthews_corr and pearson lie in
[-1, 1]. One registry, METRICS, names them all."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from cram_core.downstream.errors import DownstreamError


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
