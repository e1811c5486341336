"""S1's two analyses on top of the subset scorer: the effective dimensions of the best triples
(S1.T3) and the per-layer redundancy of pairs (S1.FL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from tuneatlas.analysis.subsets.combinatorics import Array, all_combinations, sample_combinations
from tuneatlas.analysis.subsets.ranking import rank_order, top_k
from tuneatlas.analysis.subsets.scorer import Backend, SubsetScorer

# --------------------------------------------------------------------------- S1.T3


@dataclass
class EffectiveDimensions:
    """S1.T3: ablation of the top triples, the effective dimensions and their best pair."""

    # triple_rank, triple, triple_valid, removed, pair_valid, drop, effective
    ablation: pd.DataFrame
    effective: np.ndarray  # sorted dimension ids
    pairs: pd.DataFrame  # dims, valid, test: every pair of effective dimensions, valid-ranked
    best_pair: tuple[int, int]
    best_valid: float
    best_test: float | None


def effective_dimensions(
    valid: SubsetScorer,
    triples: Array,
    *,
    test: SubsetScorer | None = None,
    rule: Literal["largest", "threshold"] = "largest",
    min_drop: float = 0.05,
) -> EffectiveDimensions:
    """Find the paper's "effective" dimensions from the top (valid-ranked) triples.

    The paper (sec. 3.2): for each of the 10 best triples on valid, remove each dimension in
    turn and record the drop of the valid score; the dimensions whose removal makes the score
    fall sharply are effective; pairs of effective dimensions are then scored and the best one
    reported (Table 3, valid and test). "Sharply" is not quantified there, so:

    * ``rule="largest"`` (default, "the removal that hurts most"): in each triple the dimension
      whose removal drops the score most (all of them if tied) is effective, if the drop is > 0;
    * ``rule="threshold"``: every dimension whose removal drops the score by >= ``min_drop``.

    If this leaves fewer than two dimensions, the next ones by their largest drop (then id) are
    added so that at least one pair exists. The best pair is valid-ranked (ties: lower ids).
    """
    triples = np.sort(np.asarray(triples, dtype=np.int64), axis=1)
    if triples.ndim != 2 or triples.shape[1] != 3 or len(triples) == 0:
        raise ValueError(f"triples must be [T, 3] with T >= 1, got shape {triples.shape}")
    if rule not in ("largest", "threshold"):
        raise ValueError(f"rule must be 'largest' or 'threshold', got {rule!r}")
    full = valid.score(triples)
    keep = np.array([[1, 2], [0, 2], [0, 1]])  # positions left after removing position p
    pairs_after = triples[:, keep].reshape(-1, 2)  # [T * 3, 2], removed position varies fastest
    pair_valid = valid.score(pairs_after).reshape(-1, 3)
    drop = full[:, None] - pair_valid
    if rule == "largest":
        eff = (drop == drop.max(1, keepdims=True)) & (drop > 0)
    else:
        eff = drop >= min_drop
    effective = _at_least_two(set(triples[eff].tolist()), triples, drop)
    pair_dims, pv, pt = _ranked_pairs(effective, valid, test)
    ablation = _ablation_frame(triples, full, pair_valid, drop, eff)
    pairs = pd.DataFrame(
        {
            "dims": [tuple(int(d) for d in p) for p in pair_dims],
            "valid": pv,
            "test": pt if pt is not None else np.full(len(pv), np.nan),
        }
    )
    return EffectiveDimensions(
        ablation=ablation,
        effective=effective,
        pairs=pairs,
        best_pair=(int(pair_dims[0, 0]), int(pair_dims[0, 1])),
        best_valid=float(pv[0]),
        best_test=None if pt is None else float(pt[0]),
    )


def _ablation_frame(
    triples: np.ndarray,
    full: np.ndarray,
    pair_valid: np.ndarray,
    drop: np.ndarray,
    eff: np.ndarray,
) -> pd.DataFrame:
    """One row per (triple, removed dimension): the pair left, its score and the drop."""
    return pd.DataFrame(
        {
            "triple_rank": np.repeat(np.arange(1, len(triples) + 1), 3),
            "triple": [tuple(int(d) for d in t) for t in np.repeat(triples, 3, axis=0)],
            "triple_valid": np.repeat(full, 3),
            "removed": triples.reshape(-1),
            "pair_valid": pair_valid.reshape(-1),
            "drop": drop.reshape(-1),
            "effective": eff.reshape(-1),
        }
    )


def _at_least_two(chosen: set[int], triples: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """The chosen dimensions, sorted, topped up to two by their largest drop (then id)."""
    if len(chosen) < 2:
        best_drop: dict[int, float] = {}
        for d, dr in zip(triples.reshape(-1).tolist(), drop.reshape(-1).tolist(), strict=True):
            best_drop[d] = max(best_drop.get(d, -np.inf), dr)
        for d, _ in sorted(best_drop.items(), key=lambda kv: (-kv[1], kv[0])):
            if len(chosen) >= 2:
                break
            chosen.add(d)
    effective = np.array(sorted(chosen), dtype=np.int64)
    if len(effective) < 2:
        raise ValueError("the triples hold fewer than two distinct dimensions")
    return effective


def _ranked_pairs(
    effective: np.ndarray, valid: SubsetScorer, test: SubsetScorer | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every pair of effective dimensions, valid-ranked, with its valid (and test) score."""
    pair_dims = effective[all_combinations(len(effective), 2)]
    pv = valid.score(pair_dims)
    order = rank_order(pair_dims, pv)
    pair_dims, pv = pair_dims[order], pv[order]
    pt = test.score(pair_dims) if test is not None else None
    return pair_dims, pv, pt


# --------------------------------------------------------------------------- S1.FL

#: S1.FL: a layer whose pair scores have at most this standard deviation ties everywhere.
DEGENERATE_STD = 1e-12


def layer_redundancy(
    layers_valid: Array,
    labels_valid: Array,
    weight: Array,
    bias: Array,
    metric: str,
    *,
    regression: bool = False,
    layers_test: Array | None = None,
    labels_test: Array | None = None,
    n_pairs: int | None = None,
    seed: int = 0,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    device: str | torch.device | None = None,
    backend: Backend = "auto",
) -> pd.DataFrame:
    """S1.FL: feed pairs of dimensions of each layer's CLS vector to the (last-layer) head.

    ``layers_*`` are ``[L+1, N, K]`` (index 0 = embeddings, as in ``embeddings.safetensors``).
    Every pair is scored per layer (``n_pairs=None``), or the same seeded sample of ``n_pairs``
    pairs in every layer. One row per layer: ``layer, n_pairs, degenerate, all_dims`` (unmasked
    head on that layer), ``mean, std, q<..>, max`` of the pair scores,
    ``best_dims, best_valid, best_test``.

    A layer whose pair scores all tie (``std <= DEGENERATE_STD``, e.g. every pair predicts the
    majority class because the head's bias decides) is ``degenerate``: any of its pairs would be
    "the best", so ``max``, ``best_valid`` and ``best_test`` are NaN and ``best_dims`` is None.
    """
    if (layers_test is None) != (labels_test is None):
        raise ValueError("give both layers_test and labels_test, or neither")
    rows = []
    combos = None
    for layer in range(len(layers_valid)):
        kw = dict(regression=regression, device=device, backend=backend)
        sv = SubsetScorer(layers_valid[layer], labels_valid, weight, bias, metric, **kw)
        st = (
            None
            if layers_test is None
            else SubsetScorer(layers_test[layer], labels_test, weight, bias, metric, **kw)
        )
        if n_pairs is None:
            scores = sv.pair_scores()
            if combos is None:
                combos = all_combinations(sv.n_dims, 2)
        else:
            if combos is None:
                combos = sample_combinations(sv.n_dims, 2, n_pairs, seed)
            scores = sv.score(combos)
        rows.append(_layer_row(layer, sv, st, combos, scores, quantiles))
    return pd.DataFrame(rows)


def _layer_row(
    layer: int,
    valid: SubsetScorer,
    test: SubsetScorer | None,
    combos: np.ndarray,
    scores: np.ndarray,
    quantiles: Sequence[float],
) -> dict[str, object]:
    """One S1.FL row: the statistics of one layer's pair scores and its best pair."""
    best_dims, best = top_k(combos, scores, 1)
    degenerate = bool(scores.std() <= DEGENERATE_STD)
    row: dict[str, object] = {
        "layer": layer,
        "n_pairs": len(scores),
        "degenerate": degenerate,
        "all_dims": valid.score_all_dims(),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
    }
    for q, v in zip(quantiles, np.quantile(scores, quantiles), strict=True):
        row[f"q{q:g}"] = float(v)
    if degenerate:  # every pair ties: no pair is "the best"
        row.update(max=np.nan, best_dims=None, best_valid=np.nan, best_test=np.nan)
    else:
        row["max"] = float(scores.max())
        row["best_dims"] = tuple(int(d) for d in best_dims[0])
        row["best_valid"] = float(best[0])
        row["best_test"] = float(test.score(best_dims)[0]) if test is not None else np.nan
    return row
