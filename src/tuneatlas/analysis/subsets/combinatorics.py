"""Subsets of dimensions as numbers: counting, lexicographic rank/unrank, seeded sampling."""

from __future__ import annotations

import math

import numpy as np
import torch

#: Paper's pair sampling rates (appendix A.2.1): 1 % for MNLI/QQP/QNLI, 5 % for the others.
PAPER_PAIR_RATES: tuple[float, ...] = (0.01, 0.05)
#: Paper's triple sample sizes (appendix A.2.2): 0.1 %, 0.01 %, 0.001 %, 0.0001 % of C(768, 3).
PAPER_TRIPLE_RATES: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)

#: Dimension ids or vectors, from numpy or torch.
Array = np.ndarray | torch.Tensor


def n_combinations(n_dims: int, size: int) -> int:
    """C(n_dims, size): how many subsets of ``size`` dimensions exist."""
    return math.comb(n_dims, size)


def paper_sample_size(n_dims: int, size: int, rate: float) -> int:
    """Number of combinations the paper sampled at ``rate`` (floor): 768, 2, 0.05 -> 14,726."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    return math.floor(n_combinations(n_dims, size) * rate)


def all_combinations(n_dims: int, size: int, max_rows: int = 20_000_000) -> np.ndarray:
    """All ``size``-subsets of ``range(n_dims)`` in lexicographic order, ``[C(K, size), size]``."""
    total = n_combinations(n_dims, size)
    if total > max_rows:
        raise ValueError(
            f"C({n_dims}, {size}) = {total:,} combinations is too many to materialise "
            f"(max_rows={max_rows:,}); use the streaming search instead"
        )
    return unrank_combinations(np.arange(total, dtype=np.int64), n_dims, size)


def _comb_table(n_dims: int, size: int) -> np.ndarray:
    """``t[u] = C(u, size)`` for u in 0..n_dims, int64."""
    if n_combinations(n_dims, size) >= 2**62:
        raise ValueError(f"C({n_dims}, {size}) overflows int64")
    return np.array([math.comb(u, size) for u in range(n_dims + 1)], dtype=np.int64)


def unrank_combinations(ranks: Array, n_dims: int, size: int) -> np.ndarray:
    """Map lexicographic ranks to sorted subsets, ``[len(ranks), size]`` int64 (vectorised)."""
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    total = n_combinations(n_dims, size)
    if size < 1 or size > n_dims:
        raise ValueError(f"size must be in 1..{n_dims}, got {size}")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= total):
        raise ValueError(f"ranks must be in [0, {total})")
    out = np.empty((ranks.size, size), dtype=np.int64)
    rest = ranks.copy()
    start = np.zeros(ranks.size, dtype=np.int64)  # smallest value allowed at this position
    for pos in range(size):
        rem = size - pos  # values still to choose, this one included
        table = _comb_table(n_dims, rem)  # C(u, rem), ascending in u
        # Subsets whose value at `pos` is >= v number C(K - v, rem); the one holding rank `rest`
        # has the largest v with C(K - v, rem) >= C(K - start, rem) - rest.
        need = table[n_dims - start] - rest
        u = np.searchsorted(table, need, side="left")
        value = n_dims - u
        out[:, pos] = value
        rest -= table[n_dims - start] - table[n_dims - value]
        start = value + 1
    return out


def rank_combinations(subsets: Array, n_dims: int) -> np.ndarray:
    """Lexicographic rank of each sorted subset (inverse of :func:`unrank_combinations`)."""
    subsets = np.sort(np.asarray(subsets, dtype=np.int64), axis=1)
    size = subsets.shape[1]
    rank = np.zeros(len(subsets), dtype=np.int64)
    start = np.zeros(len(subsets), dtype=np.int64)
    for pos in range(size):
        table = _comb_table(n_dims, size - pos)
        rank += table[n_dims - start] - table[n_dims - subsets[:, pos]]
        start = subsets[:, pos] + 1
    return rank


def sample_combinations(n_dims: int, size: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct ``size``-subsets drawn uniformly without replacement, in lex order.

    The same ``(n_dims, size, n, seed)`` always gives the same subsets (numpy PCG64 generator).
    """
    total = n_combinations(n_dims, size)
    if not 0 < n <= total:
        raise ValueError(f"n must be in 1..C({n_dims}, {size}) = {total:,}, got {n}")
    rng = np.random.default_rng(seed)
    # Generator.choice without replacement never materialises the population when it is large
    # relative to n, so 75k of 75M triples is cheap.
    ranks = np.sort(rng.choice(total, size=n, replace=False))
    return unrank_combinations(ranks, n_dims, size)
