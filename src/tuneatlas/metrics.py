"""Metric registry: each task names one metric; every score in tuneatlas goes through here.

Scores are fractions (accuracy 0.948, MCC 0.531, Pearson 0.88), not percentages.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_pred.std() == 0 or y_true.std() == 0:
        return 0.0  # constant predictions carry no correlation
    return float(np.corrcoef(y_true, y_pred)[0, 1])


def _spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties share their mean rank); STS-B's
    metric in SimCSE."""
    from scipy.stats import rankdata

    return _pearson(rankdata(y_true), rankdata(y_pred))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda t, p: float(accuracy_score(t, p)),
    "mcc": lambda t, p: float(matthews_corrcoef(t, p)),
    "f1": lambda t, p: float(f1_score(t, p, average="binary", zero_division=0)),
    "macro_f1": lambda t, p: float(f1_score(t, p, average="macro", zero_division=0)),
    "pearson": _pearson,
    "spearman": _spearman,
}


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Class ids from logits, or the scalar output for regression (logits of shape [N, 1])."""
    logits = np.asarray(logits)
    if regression:
        return logits.reshape(len(logits), -1)[:, 0]
    return logits.argmax(axis=-1)


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Score predictions (class ids, or values for regression) with a registered metric."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}") from None
    return fn(np.asarray(y_true), np.asarray(y_pred))


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    return f1_score(y_true, y_pred, labels=list(range(num_labels)), average=None, zero_division=0)
