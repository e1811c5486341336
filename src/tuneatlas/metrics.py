"""Metric registry: each task names one metric; every score in tuneatlas goes through here.

Scores are fractions (accuracy 0.948, MCC 0.531, Pearson 0.88), not percentages.

The classification metrics are scikit-learn's (`sklearn.metrics` 1.9: accuracy_score,
matthews_corrcoef, f1_score with zero_division=0), computed here in NumPy with the same
arithmetic, so they give the very same floats (tests/unit/test_metrics.py checks them against
scikit-learn) without importing scikit-learn, which costs every training job about a second of
start-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.average(np.asarray(y_true) == np.asarray(y_pred)))


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts [true label, predicted label] over `labels` (sorted; rows of other labels drop)."""
    t = np.searchsorted(labels, y_true)
    p = np.searchsorted(labels, y_pred)
    t_ok = (t < len(labels)) & (labels[np.minimum(t, len(labels) - 1)] == y_true)
    p_ok = (p < len(labels)) & (labels[np.minimum(p, len(labels) - 1)] == y_pred)
    keep = t_ok & p_ok
    n = len(labels)
    return np.bincount(t[keep] * n + p[keep], minlength=n * n).reshape(n, n)


def _mcc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    c = _confusion(y_true, y_pred, np.unique(np.hstack([y_true, y_pred])))
    t_sum = c.sum(axis=1, dtype=np.float64)
    p_sum = c.sum(axis=0, dtype=np.float64)
    n_correct = np.trace(c, dtype=np.float64)
    n = p_sum.sum()
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n**2 - np.dot(t_sum, t_sum)
    denom = cov_ypyp * cov_ytyt
    return 0.0 if denom == 0 else float(cov_ytyp / np.sqrt(denom))


def _f1_per_label(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """F1 of each of `labels` (one-vs-rest); 0 where the label is neither true nor predicted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    hit = y_true[:, None] == labels[None, :]
    said = y_pred[:, None] == labels[None, :]
    tp = (hit & said).sum(axis=0)
    denom = 1.0 * hit.sum(axis=0).astype(np.float64) + said.sum(axis=0).astype(np.float64)
    zero = denom == 0
    denom[zero] = 1.0
    f = (2.0 * tp.astype(np.float64)) / denom
    f[zero] = 0.0
    return f


def _f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    present = np.unique(np.hstack([np.asarray(y_true), np.asarray(y_pred)]))
    if len(present) > 2 or (len(present) == 2 and 1 not in present):
        raise ValueError(f"binary F1 needs the labels 0/1 with 1 as positive, got {present}")
    return float(_f1_per_label(y_true, y_pred, np.array([1]))[0])


def _f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    labels = np.unique(np.hstack([np.asarray(y_true), np.asarray(y_pred)]))
    return float(np.average(_f1_per_label(y_true, y_pred, labels)))


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
    "accuracy": _accuracy,
    "mcc": _mcc,
    "f1": _f1_binary,
    "macro_f1": _f1_macro,
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
    return _f1_per_label(y_true, y_pred, np.arange(num_labels))
