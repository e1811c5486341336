"""tuneatlas.metrics computes scikit-learn's classification metrics without importing it (job
start-up): its scores must be the very floats scikit-learn gives, on every kind of input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tuneatlas.metrics import per_class_f1, score

SKLEARN = {
    "accuracy": lambda t, p: float(accuracy_score(t, p)),
    "mcc": lambda t, p: float(matthews_corrcoef(t, p)),
    "f1": lambda t, p: float(f1_score(t, p, average="binary", zero_division=0)),
    "macro_f1": lambda t, p: float(f1_score(t, p, average="macro", zero_division=0)),
}


def cases(binary: bool):
    """Random labels of every size and skew, plus the degenerate ones: constant predictions,
    a class never predicted, a class never true, all right, all wrong, one row."""
    rng = np.random.default_rng(0)
    k_choices = (2,) if binary else (2, 3, 5, 7)
    for _ in range(300):
        k = int(rng.choice(k_choices))
        n = int(rng.integers(1, 400))
        skew = rng.dirichlet(np.ones(k) * rng.uniform(0.2, 3))
        t = rng.choice(k, size=n, p=skew)
        p = np.where(rng.random(n) < rng.uniform(0, 1), t, rng.choice(k, size=n))
        yield t, p
    t = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    yield t, np.zeros_like(t)
    yield t, np.ones_like(t)
    yield t, t.copy()
    yield t, 1 - t
    yield np.array([1]), np.array([1])
    yield np.array([0]), np.array([0])
    yield np.zeros(5, dtype=int), np.array([0, 0, 1, 0, 0])
    if not binary:
        yield np.array([0, 2, 2, 4]), np.array([0, 2, 1, 4])  # labels with gaps


@pytest.mark.parametrize("metric", sorted(SKLEARN))
def test_scores_are_sklearns_exact_floats(metric):
    for t, p in cases(binary=metric == "f1"):
        assert score(metric, t, p) == SKLEARN[metric](t, p), (metric, t.tolist(), p.tolist())


def test_per_class_f1_is_sklearns_with_absent_classes():
    for t, p in cases(binary=False):
        k = int(max(t.max(), p.max())) + 2  # one class neither true nor predicted
        expected = f1_score(t, p, labels=list(range(k)), average=None, zero_division=0)
        np.testing.assert_array_equal(per_class_f1(t, p, k), expected)


def test_binary_f1_refuses_multiclass_labels():
    with pytest.raises(ValueError, match="binary F1"):
        score("f1", np.array([0, 1, 2]), np.array([0, 1, 1]))
