"""Ensemble weights and the statistics that say whether one ensemble beats another (S5).

Members are indexed by the cluster they did NOT see: column i of a weight matrix belongs to the
member trained on every cluster but cluster i (k = 3: column C is member AB).

- Monju (the study): w_i = d_i / sum_j d_j, d_i = Euclidean distance of the input's embedding
  to centre i: the further the input lies from the cluster a member missed, the more it counts.
- c-BTM-style: p = softmax(-d / T) is the input's soft assignment to the clusters (c-BTM weights
  the expert of cluster i by p_i). Each member here saw k - 1 clusters, so it gets the mass of
  the clusters it saw, shared among the k - 1 members that saw each: w_i = (1 - p_i) / (k - 1).
  T -> 0 gives the hard assignment (the member that missed the nearest cluster gets 0, the
  others 1 / (k - 1)); T -> inf gives equal weights.
- Seed ensemble (the baseline): equal weights 1 / M.
Weights multiply the members' logits, as c-BTM weights logits (`combine`); "probs" averages
softmax probabilities instead.
"""

from __future__ import annotations

import numpy as np


def monju_weights(d: np.ndarray) -> np.ndarray:
    """[N, k] distances -> [N, k] weights d_i / sum_j d_j (rows sum to 1)."""
    d = np.asarray(d, dtype=np.float64)
    total = d.sum(1, keepdims=True)
    # an input exactly on every centre (all d = 0) has no preference: equal weights
    return np.where(total > 0, d / np.where(total > 0, total, 1.0), 1.0 / d.shape[1])


def cbtm_weights(d: np.ndarray, temperature: float) -> np.ndarray:
    """[N, k] distances -> [N, k] weights (1 - softmax(-d / T)_i) / (k - 1)."""
    if temperature <= 0:
        raise ValueError(f"studies.s5.temperature: must be > 0, got {temperature}")
    d = np.asarray(d, dtype=np.float64)
    z = -d / temperature
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return (1.0 - p) / (d.shape[1] - 1)


def combine(logits: np.ndarray, weights: np.ndarray, space: str = "logits") -> np.ndarray:
    """Weighted sum over members. logits [M, N, C], weights [N, M] -> [N, C] scores."""
    logits = np.asarray(logits, dtype=np.float64)
    if space == "probs":
        z = logits - logits.max(2, keepdims=True)
        logits = np.exp(z) / np.exp(z).sum(2, keepdims=True)
    elif space != "logits":
        raise ValueError(f"studies.s5.combine: unknown {space!r}; use logits or probs")
    return np.einsum("mnc,nm->nc", logits, np.asarray(weights, dtype=np.float64))


def oracle_correct(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[M, N] member predictions -> [N] bool: some member is right (an upper bound)."""
    return (np.asarray(preds) == np.asarray(labels)[None, :]).any(0)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[B, n] example indices drawn with replacement; shared by every model so that intervals
    of differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(
    correct: np.ndarray, indices: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of `correct` (accuracy, or a per-example difference)."""
    means = np.asarray(correct, dtype=np.float64)[indices].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two classifiers on the same examples: a binomial test
    of the discordant pairs (one right, the other wrong) against 1/2."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
