"""``search_subsets``: rank the subsets of one size on valid, exhaustively or by a seeded
sample, and look the best ones up on test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuneatlas.analysis.subsets.combinatorics import (
    all_combinations,
    n_combinations,
    sample_combinations,
)
from tuneatlas.analysis.subsets.kernels import histogram_edges, score_histogram
from tuneatlas.analysis.subsets.ranking import top_k
from tuneatlas.analysis.subsets.scorer import SubsetScorer


@dataclass
class SubsetSearch:
    """Result of scoring subsets of one size: valid-ranked top-k, histogram, all scores.

    ``combos``/``scores`` hold every evaluated subset with its valid score (lexicographic order)
    except for exhaustive triples, which are streamed and not kept.
    """

    size: int
    exhaustive: bool
    n_evaluated: int
    seed: int | None
    dims: np.ndarray  # [k, size] valid-ranked
    valid: np.ndarray  # [k]
    test: np.ndarray | None  # [k] the same subsets scored on test
    edges: np.ndarray  # [bins + 1]
    counts: np.ndarray  # [bins] histogram of the valid scores of all evaluated subsets
    combos: np.ndarray | None
    scores: np.ndarray | None

    def top_frame(self) -> pd.DataFrame:
        """Tidy top-k table: ``rank, dims, valid, test`` (rank 1 = best on valid)."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.valid) + 1),
                "dims": [tuple(int(d) for d in row) for row in self.dims],
                "valid": self.valid,
                "test": self.test if self.test is not None else np.full(len(self.valid), np.nan),
            }
        )

    def histogram_frame(self) -> pd.DataFrame:
        """``bin_low, bin_high, count`` rows of the score histogram."""
        return pd.DataFrame(
            {"bin_low": self.edges[:-1], "bin_high": self.edges[1:], "count": self.counts}
        )


def search_subsets(
    valid: SubsetScorer,
    size: int,
    *,
    k: int = 5,
    test: SubsetScorer | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    bins: int | Sequence[float] | np.ndarray = 100,
) -> SubsetSearch:
    """Rank ``size``-subsets on ``valid`` and look the top ``k`` up on ``test``.

    ``n_samples=None`` scores every subset (``size`` 2 or 3; triples streamed with bounded
    memory); otherwise a seeded sample of ``n_samples`` distinct subsets as the paper did
    (see :func:`paper_sample_size`). The histogram covers every evaluated subset.
    """
    if test is not None and (test.n_dims, test.n_classes) != (valid.n_dims, valid.n_classes):
        raise ValueError("valid and test scorers must share the head (same K and C)")
    if test is not None and test.metric != valid.metric:
        raise ValueError(f"metric differs: valid {valid.metric!r}, test {test.metric!r}")
    edges = histogram_edges(valid.metric, bins)
    combos: np.ndarray | None
    scores: np.ndarray | None
    if n_samples is not None:
        combos = sample_combinations(valid.n_dims, size, n_samples, seed)
        scores = valid.score(combos)
        dims, best = top_k(combos, scores, k)
        counts = score_histogram(scores, edges)
    elif size == 2:
        scores = valid.pair_scores()
        combos = all_combinations(valid.n_dims, 2)
        dims, best = top_k(combos, scores, k)
        counts = score_histogram(scores, edges)
    elif size == 3:
        combos = scores = None
        dims, best, counts = valid.scan_triples(k, edges)
    else:
        raise ValueError(f"exhaustive search supports size 2 or 3, got {size}; pass n_samples")
    return SubsetSearch(
        size=size,
        exhaustive=n_samples is None,
        n_evaluated=n_combinations(valid.n_dims, size) if n_samples is None else n_samples,
        seed=None if n_samples is None else seed,
        dims=dims,
        valid=best,
        test=None if test is None else test.score(dims),
        edges=edges,
        counts=counts,
        combos=combos,
        scores=scores,
    )
