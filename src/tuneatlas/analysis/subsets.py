"""S1 dimension-subset search: score every (or a seeded sample of) subset of CLS dimensions.

A trained linear head (``W [C, K]``, ``b [C]``) reads a K-dim CLS vector ``h``. At test time only
a subset ``S`` of dimensions feeds it, all others zeroed (DropConnect-style masking)::

    logits = W[:, S] @ h[S] + b

The paper (seed 000) could only *sample* 1-5 % of the C(768, 2) = 294,528 pairs and at most
0.1 % of the C(768, 3) = 75,202,816 triples. This module scores all of them exactly (and keeps
the paper's seeded sampling available), by decomposing logits into per-dimension
*contributions* ``W[c, k] * h[n, k]`` that are summed per subset instead of re-running the head:

* binary classification uses the logit difference ``d = (W1 - W0) . h + (b1 - b0)``; the head's
  argmax picks class 1 iff ``d > 0`` (argmax keeps the first maximum, so a tie is class 0);
* multi-class classification keeps one contribution row per class and counts, per class, the
  examples where it beats every earlier class strictly and every later one or ties it (argmax);
* MCC / F1 / macro-F1 / accuracy all follow from vectorised confusion counts (for a binary head
  through a table of the score of every possible count pair);
* regression (Pearson) uses the closed form: ``pred_S = sum_{j in S} W_j h_j + b``, so
  ``cov(pred_S, y)`` and ``var(pred_S)`` are sums over a K-vector and a K x K matrix and every
  pair/triple costs O(1), independent of N.

Exhaustive triples are enumerated by their *middle* dimension ``j``: all triples ``(i, j, l)``
with ``i < j < l`` form one dense ``[j, K-1-j]`` block ``left[i] + right[l]``, so no work is wasted
on invalid index orders and memory stays bounded; a running top-k and a histogram are updated
block by block. The block kernel (``sum_n [a[i, n] + b[l, n] > 0]``) is one fused loop under
``torch.compile`` (Inductor C++ on CPU, Triton on CUDA) when the amount of work pays for the
compile; otherwise, or when compiling fails, the same torch code runs eagerly in cache-sized
chunks.

Ranking is deterministic everywhere: score descending, then dimension ids lexicographically
ascending. Scores are fractions like everywhere in tuneatlas (see ``tuneatlas.metrics``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "mcc", "f1", "macro_f1")
REGRESSION_METRICS: tuple[str, ...] = ("pearson",)

#: Paper's pair sampling rates (appendix A.2.1): 1 % for MNLI/QQP/QNLI, 5 % for the others.
PAPER_PAIR_RATES: tuple[float, ...] = (0.01, 0.05)
#: Paper's triple sample sizes (appendix A.2.2): 0.1 %, 0.01 %, 0.001 %, 0.0001 % of C(768, 3).
PAPER_TRIPLE_RATES: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)

Backend = Literal["auto", "compile", "eager"]
Array = np.ndarray | torch.Tensor

# backend="auto" compiles when the eager kernels would need at least this long: a compile costs
# ~3-5 s from a warm Inductor cache and ~20 s cold on 2 cores, the fused kernel then runs
# 5-15x faster than eager torch.
COMPILE_MIN_EAGER_SECONDS = 10.0
# Eager throughput used for that estimate, in (combinations x examples) per second, measured on
# 2 shared cores: binary ~1.5e9; multi-class ~2.5e8 / (C - 1) (C-1 masks of C-1 comparisons).
_EAGER_RATE_BINARY = 1.5e9
_EAGER_RATE_MULTICLASS = 2.5e8
# Eager chunks hold this many float32 temporaries (4 MB: stays in L3 and keeps the per-call
# overhead of torch small relative to the work).
_EAGER_CHUNK_ELEMENTS = 1 << 20
# Multi-class chunks allocate C logits and C-1 masks per chunk; smaller chunks stay cheap to
# allocate (below glibc's mmap threshold) and cache-resident.
_EAGER_CHUNK_ELEMENTS_MULTICLASS = 1 << 17
# Binary heads tabulate the score of every (pos1, pos0) count pair up to this many entries.
_MAX_TABLE = 1 << 21
# Closed-form Pearson: a prediction whose variance is below this fraction of its squared scale
# is constant up to rounding; metrics.pearson scores constant predictions 0.
_PEARSON_REL_TOL = 1e-12


# --------------------------------------------------------------------------- combinatorics


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


# --------------------------------------------------------------------------- metrics


def metric_from_confusion(conf: torch.Tensor, metric: str) -> torch.Tensor:
    """Vectorised classification metric from confusion counts ``[..., C_true, C_pred]``.

    Agrees with ``tuneatlas.metrics`` (scikit-learn): macro-F1 averages over the classes present
    in the labels or the predictions, F1/MCC are 0 where their denominator vanishes.
    """
    conf = torch.as_tensor(conf).to(torch.float64)
    c = conf.shape[-1]
    return metric_from_cells([[conf[..., m, k] for k in range(c)] for m in range(c)], metric)


def metric_from_cells(cells: Sequence[Sequence[torch.Tensor]], metric: str) -> torch.Tensor:
    """Like :func:`metric_from_confusion`, with ``cells[true][pred]`` as separate tensors.

    The engine's form: reductions over a trailing class axis of size 2-3 are slow in torch,
    elementwise arithmetic on whole ``[A, B]`` count blocks is fast.
    """
    c = len(cells)
    tp = [cells[k][k] for k in range(c)]
    true_sum = [sum(cells[m][k] for k in range(c)) for m in range(c)]
    pred_sum = [sum(cells[m][k] for m in range(c)) for k in range(c)]
    n = sum(true_sum)
    if metric == "accuracy":
        return sum(tp) / n
    if metric == "f1":
        if c != 2:
            raise ValueError(f"metric 'f1' is binary; the head has {c} classes")
        den = true_sum[1] + pred_sum[1]  # 2 tp + fp + fn
        return torch.where(den > 0, 2 * tp[1] / den.clamp_min(1), 0.0)
    if metric == "macro_f1":
        total = 0.0
        present = 0.0
        for k in range(c):
            den = true_sum[k] + pred_sum[k]  # 2 tp + fp + fn; > 0 iff the class occurs at all
            total = total + torch.where(den > 0, 2 * tp[k] / den.clamp_min(1), 0.0)
            present = present + (den > 0).to(torch.float64)
        return total / present
    if metric == "mcc":
        # scikit-learn's multi-class form (Gorodkin's R_K); equals the binary formula for C = 2.
        cov_tp = sum(tp) * n - sum(t * p for t, p in zip(true_sum, pred_sum, strict=True))
        cov_pp = n * n - sum(p * p for p in pred_sum)
        cov_tt = n * n - sum(t * t for t in true_sum)
        den = cov_pp * cov_tt
        return torch.where(den > 0, cov_tp / den.clamp_min(1).sqrt(), 0.0)
    raise ValueError(f"unknown classification metric {metric!r}; known: {CLASSIFICATION_METRICS}")


def histogram_edges(metric: str, bins: int | Sequence[float] | np.ndarray = 100) -> np.ndarray:
    """Bin edges for score histograms: ``bins`` equal bins over the metric's range, or as given.

    Accuracy/F1 live in [0, 1]; MCC and Pearson in [-1, 1].
    """
    if not np.isscalar(bins):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("bin edges must be a strictly increasing 1-d sequence")
        return edges
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    low = -1.0 if metric in ("mcc", "pearson") else 0.0
    return np.linspace(low, 1.0, int(bins) + 1)


def score_histogram(scores: Array, edges: np.ndarray) -> np.ndarray:
    """Counts per bin with ``numpy.histogram`` semantics (last bin closed, outside ignored)."""
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    _add_histogram(counts, torch.as_tensor(np.asarray(scores), dtype=torch.float64), edges)
    return counts


def _add_histogram(counts: np.ndarray, scores: torch.Tensor, edges: np.ndarray) -> None:
    n_bins = len(edges) - 1
    idx = _histogram_bins(scores.reshape(-1).to(torch.float64), edges)
    counts += torch.bincount(idx, minlength=n_bins + 1)[:n_bins].cpu().numpy()


def _histogram_bins(flat: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
    """Bin index of each score (``numpy.histogram`` rules); ``len(edges) - 1`` = outside."""
    n_bins = len(edges) - 1
    edges_t = torch.as_tensor(edges, dtype=torch.float64, device=flat.device)
    first, last = float(edges[0]), float(edges[-1])
    if np.array_equal(edges, np.linspace(first, last, n_bins + 1)):
        # numpy.histogram's own fast path for equal bins: arithmetic guess, then a one-bin
        # correction against the edges (several times cheaper than a binary search).
        idx = ((flat - first) / (last - first) * n_bins).to(torch.int64).clamp_(0, n_bins - 1)
        idx -= (flat < edges_t[idx]).to(torch.int64)
        idx += ((flat >= edges_t[(idx + 1).clamp_(max=n_bins)]) & (idx < n_bins - 1)).to(
            torch.int64
        )
    else:
        idx = torch.bucketize(flat, edges_t, right=True) - 1
        idx = torch.where(flat == last, n_bins - 1, idx)  # the right edge closes the last bin
    # Scores outside [first, last] go to an overflow bin that the caller drops.
    return torch.where((flat < first) | (flat > last), n_bins, idx)


# --------------------------------------------------------------------------- block kernels


def _binary_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[A, n] x [B, n] -> [A, B]``: how many n have ``a[i, n] + b[l, n] > 0`` (fused form).

    float32 counts are exact below 2**24 examples and vectorise better than int32 in Inductor.
    """
    return ((a[:, None, :] + b[None, :, :]) > 0).to(torch.float32).sum(-1)


def _binary_counts_eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eager twin of :func:`_binary_counts`: chunked, in one reused float buffer.

    A fresh multi-MB temporary per chunk costs more (page faults) than the arithmetic, and
    ``gt_`` on the float buffer writes 1.0/0.0 in place: no bool temporary either.
    """
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    rows = max(1, min(a.shape[0], _EAGER_CHUNK_ELEMENTS // max(1, b.shape[0] * a.shape[1])))
    buf = torch.empty(rows, b.shape[0], a.shape[1], dtype=torch.float32, device=a.device)
    for r0 in range(0, a.shape[0], rows):
        chunk = a[r0 : r0 + rows]
        x = buf[: chunk.shape[0]]
        torch.add(chunk[:, None, :], b[None, :, :], out=x)
        torch.sum(x.gt_(0), dim=-1, out=out[r0 : r0 + rows])
    return out


def _first_max_masks(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Masks "the head predicts class k" for k < C-1, with argmax's first-maximum tie rule.

    Class k wins iff it beats every earlier class strictly and every later class or ties it;
    the last class's count is the rest, so it needs no mask. Comparisons vectorise well both
    eagerly and fused (a running ``where``-argmax or ``argmax`` over a leading axis of size 2-3
    is many times slower in eager torch).
    """
    masks = []
    for k in range(len(logits) - 1):
        mask = None
        for m in range(len(logits)):
            if m == k:
                continue
            wins = logits[k] > logits[m] if m < k else logits[k] >= logits[m]
            mask = wins if mask is None else mask & wins
        masks.append(mask)
    return masks


def _multiclass_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[C, A, n] x [C, B, n] -> [C-1, A, B]``: per class k < C-1, how many n predict k."""
    logits = [a[c][:, None, :] + b[c][None, :, :] for c in range(a.shape[0])]
    return torch.stack([m.to(torch.float32).sum(-1) for m in _first_max_masks(logits)], dim=0)


def _multiclass_counts_eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eager twin of :func:`_multiclass_counts`, chunked over rows."""
    n_classes, rows_a, n = a.shape
    out = torch.empty(n_classes - 1, rows_a, b.shape[1], dtype=torch.float32, device=a.device)
    rows = max(1, _EAGER_CHUNK_ELEMENTS_MULTICLASS // max(1, b.shape[1] * n))
    for r0 in range(0, rows_a, rows):
        logits = [a[c, r0 : r0 + rows, None, :] + b[c, None, :, :] for c in range(n_classes)]
        for k, mask in enumerate(_first_max_masks(logits)):
            torch.sum(mask, dim=-1, out=out[k, r0 : r0 + rows])
    return out


_KERNELS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "binary": (_binary_counts, _binary_counts_eager),
    "multiclass": (_multiclass_counts, _multiclass_counts_eager),
}


class _Compiled:
    """Process-wide cache of compiled block kernels, with a permanent eager fallback."""

    def __init__(self) -> None:
        self.fns: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}
        self.ready: set[tuple[str, str]] = set()  # compiled and run once: calls are now free
        self.broken: str | None = None

    def run(self, kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        """Run the compiled kernel, or return None if compiling is impossible here."""
        if self.broken is not None:
            return None
        key = (kind, a.device.type)
        fn = self.fns.get(key)
        if fn is None:
            # dynamic=True: one graph for every block shape (sizes vary with the middle index).
            # On CPU, Inductor otherwise decides at compile time from the first call's sizes
            # and thread count whether to emit an OpenMP loop; dynamic_threads always emits it
            # and lets the runtime thread count (torch.set_num_threads) decide.
            options = {"cpp.dynamic_threads": True} if a.device.type == "cpu" else None
            fn = torch.compile(_KERNELS[kind][0], dynamic=True, fullgraph=True, options=options)
            self.fns[key] = fn
        try:
            out = fn(a, b)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
            self.broken = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            warnings.warn(
                f"torch.compile of the subset kernel failed ({self.broken}); "
                "falling back to eager torch (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self.ready.add(key)
        return out


_COMPILED = _Compiled()


def compile_error() -> str | None:
    """Why ``torch.compile`` was given up in this process (then everything runs eager)."""
    return _COMPILED.broken


def _as_tensor(x: Array, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


# --------------------------------------------------------------------------- scorer


class SubsetScorer:
    """Scores subsets of input dimensions of one split through a fixed linear head.

    Args:
        hidden: ``[N, K]`` vectors the head reads (e.g. last-layer CLS of the split).
        labels: ``[N]`` class ids (classification) or targets (regression).
        weight: head weight ``[C, K]`` (``C = 1`` for regression).
        bias: head bias ``[C]``.
        metric: one of ``accuracy, mcc, f1, macro_f1`` (classification) or ``pearson``.
        regression: the head outputs one value scored by Pearson correlation.
        device: where to compute; default: ``hidden``'s device if it is a tensor, else CPU.
        backend: ``"compile"`` fuses block kernels with ``torch.compile``; ``"eager"`` never
            compiles; ``"auto"`` compiles when the eager kernels would need at least
            ``COMPILE_MIN_EAGER_SECONDS`` or the kernel is already compiled in this process.

    Attributes:
        kernel_runs: how many exhaustive-search block kernels ran ``"compiled"`` and how many
            ``"eager"`` on this scorer (blocks too small to compile, or every block after a
            failed compile, run eager). It only records; it never changes a score, and it is
            how a caller (or a test) sees that ``backend="compile"`` really ran fused code.
    """

    def __init__(
        self,
        hidden: Array,
        labels: Array,
        weight: Array,
        bias: Array,
        metric: str,
        *,
        regression: bool = False,
        device: str | torch.device | None = None,
        backend: Backend = "auto",
    ) -> None:
        if device is None:
            device = hidden.device if isinstance(hidden, torch.Tensor) else "cpu"
        self.device = torch.device(device)
        if backend not in ("auto", "compile", "eager"):
            raise ValueError(f"backend must be auto, compile or eager, got {backend!r}")
        self.backend: Backend = backend
        self.kernel_runs: dict[str, int] = {"compiled": 0, "eager": 0}
        self.metric = metric
        self.regression = regression

        h = _as_tensor(hidden, torch.float32, self.device)
        w = _as_tensor(weight, torch.float32, self.device)
        bvec = _as_tensor(bias, torch.float32, self.device).reshape(-1)
        if h.ndim != 2:
            raise ValueError(f"hidden must be [N, K], got shape {tuple(h.shape)}")
        if w.ndim != 2 or w.shape[1] != h.shape[1]:
            raise ValueError(
                f"weight must be [C, K={h.shape[1]}], got shape {tuple(w.shape)} "
                "(is the head transposed?)"
            )
        if bvec.shape[0] != w.shape[0]:
            raise ValueError(f"bias has {bvec.shape[0]} entries, weight has {w.shape[0]} rows")
        if not (torch.isfinite(h).all() and torch.isfinite(w).all() and torch.isfinite(bvec).all()):
            raise ValueError("hidden, weight and bias must be finite")
        self.n_examples, self.n_dims = h.shape
        self.n_classes = w.shape[0]
        if self.n_examples < 1:
            raise ValueError("the split has no examples")
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if y.shape != (self.n_examples,):
            raise ValueError(f"labels must be [N={self.n_examples}], got shape {y.shape}")

        if regression:
            if metric not in REGRESSION_METRICS:
                raise ValueError(f"regression scores with {REGRESSION_METRICS}, not {metric!r}")
            if self.n_classes != 1:
                raise ValueError(f"a regression head has one output, got C={self.n_classes}")
            self._setup_regression(h, y, w[0])
        else:
            if metric not in CLASSIFICATION_METRICS:
                raise ValueError(
                    f"classification scores with {CLASSIFICATION_METRICS}, not {metric!r}"
                )
            if self.n_classes < 2:
                raise ValueError("a classification head needs C >= 2 outputs")
            if metric == "f1" and self.n_classes != 2:
                raise ValueError(f"metric 'f1' is binary; the head has {self.n_classes} classes")
            self._setup_classification(h, y, w, bvec)

    # ---- setup

    def _setup_classification(
        self, h: torch.Tensor, y: np.ndarray, w: torch.Tensor, b: torch.Tensor
    ) -> None:
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError("classification labels must be integer class ids")
        y = y.astype(np.int64)
        if y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError(f"labels must be in 0..{self.n_classes - 1}")
        # Rows sorted by label: every confusion-matrix row is then a contiguous segment, so the
        # kernels count predictions per segment without reading the labels at all.
        order = torch.as_tensor(np.argsort(y, kind="stable"), device=self.device)
        self.class_sizes = np.bincount(y, minlength=self.n_classes).astype(np.int64)
        ht = h.T[:, order]  # [K, N]
        self.binary = self.n_classes == 2
        if self.binary:
            # Logit difference: the head predicts 1 iff d = (W1-W0).h + (b1-b0) > 0.
            contrib = ((w[1] - w[0])[:, None] * ht).contiguous()  # [K, N]
            self._bias = (b[1] - b[0]).reshape(1)
        else:
            contrib = (w[:, :, None] * ht[None]).contiguous()  # [C, K, N]
            self._bias = b.reshape(-1, 1)
        self._segments: list[tuple[int, torch.Tensor]] = []  # (true class, contributions)
        stop = 0
        for cls, size in enumerate(self.class_sizes.tolist()):
            start, stop = stop, stop + size
            if size:
                self._segments.append((cls, contrib[..., start:stop].contiguous()))
        self._table = self._build_table()

    def _setup_regression(self, h: torch.Tensor, y: np.ndarray, w: torch.Tensor) -> None:
        # Closed form in float64: pred_S - mean = sum_{j in S} W_j (h_j - mean_j), hence
        # cov(pred_S, y) = sum_S cy_j and var(pred_S) = sum_{S x S} M_jl.
        h64 = h.to(torch.float64)
        hc = h64 - h64.mean(0)
        yc = torch.as_tensor(y.astype(np.float64), device=self.device)
        yc = yc - yc.mean()
        w64 = w.to(torch.float64)
        self._cov_y = w64 * (hc.T @ yc)  # [K]
        self._cov = (hc.T @ hc) * w64[:, None] * w64[None, :]  # [K, K]
        self._yy = float(yc @ yc)
        # Scale of each contribution, for the "constant prediction" tolerance.
        self._scale = w64.abs() * h64.pow(2).mean(0).sqrt()
        self._table = None

    # ---- public scoring

    def score(self, subsets: Array) -> np.ndarray:
        """Scores of arbitrary equal-size subsets ``[M, s]`` (dimension ids), float64 ``[M]``."""
        s = np.asarray(subsets.cpu() if isinstance(subsets, torch.Tensor) else subsets)
        if s.ndim == 1:
            s = s[None, :]
        if s.ndim != 2 or s.shape[1] < 1:
            raise ValueError(f"subsets must be [M, s] with s >= 1, got shape {s.shape}")
        s = np.sort(s.astype(np.int64), axis=1)
        if s.size and (s.min() < 0 or s.max() >= self.n_dims):
            raise ValueError(f"dimension ids must be in 0..{self.n_dims - 1}")
        if s.shape[1] > 1 and np.any(s[:, 1:] == s[:, :-1]):
            raise ValueError("a subset repeats a dimension")
        out = np.empty(len(s), dtype=np.float64)
        per_row = s.shape[1] * (s.shape[1] if self.regression else self.n_examples)
        chunk = max(1, _EAGER_CHUNK_ELEMENTS // max(1, per_row * self.n_classes))
        for r0 in range(0, len(s), chunk):
            idx = torch.as_tensor(s[r0 : r0 + chunk], device=self.device)
            out[r0 : r0 + chunk] = self._score_rows(idx).cpu().numpy()
        return out

    def score_all_dims(self) -> float:
        """Score of the unmasked head (every dimension feeds it): the S1 baseline."""
        return float(self.score(np.arange(self.n_dims)[None, :])[0])

    def pair_scores(self) -> np.ndarray:
        """Scores of all C(K, 2) pairs in lexicographic order (index = ``rank_combinations``)."""
        out = np.empty(n_combinations(self.n_dims, 2), dtype=np.float64)
        pos = 0
        for _i0, _i1, block in self._pair_blocks():
            vals = block.cpu().numpy()
            out[pos : pos + len(vals)] = vals
            pos += len(vals)
        assert pos == len(out)
        return out

    def scan_triples(
        self, k: int = 10, edges: int | Sequence[float] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score all C(K, 3) triples with bounded memory.

        Returns the top-``k`` triples ``[k, 3]`` with their scores (score descending, then ids
        ascending) and, if ``edges`` (bin edges, or a number of bins) is given, the histogram
        counts of all triple scores.
        """
        if self.n_dims < 3:
            raise ValueError("triples need K >= 3 dimensions")
        if edges is not None:
            edges = histogram_edges(self.metric, edges)
        top = _RunningTopK(k, 3)
        counts = None if edges is None else np.zeros(len(edges) - 1, dtype=np.int64)
        key_bins = None
        if edges is not None and self._table is not None:
            # Every score is a table entry: bin the table once, then only look bins up.
            key_bins = _histogram_bins(self._table, edges)
        for j, block, keys in self._triple_blocks():
            if counts is not None:
                if keys is not None and key_bins is not None:
                    n_bins = len(edges) - 1
                    hist = torch.bincount(key_bins[keys.reshape(-1)], minlength=n_bins + 1)
                    counts += hist[:n_bins].cpu().numpy()
                else:
                    _add_histogram(counts, block, edges)
            top.update_block(block, j)
        dims, scores = top.result()
        return dims, scores, counts

    # ---- internals: combination -> score

    def _metric(self, counts: list[torch.Tensor]) -> torch.Tensor:
        return self._metric_and_keys(counts)[0]

    def _metric_and_keys(
        self, counts: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores from per-segment counts, plus their score-table keys when there is a table."""
        if self._table is None:
            return self._metric_direct(counts), None
        pos = [torch.zeros((), dtype=torch.int64, device=self.device)] * 2
        for (cls, _), cnt in zip(self._segments, counts, strict=True):
            pos[cls] = cnt.to(torch.int64)
        n0 = int(self.class_sizes[0])
        if self.metric == "accuracy":
            keys = pos[1] - pos[0] + n0  # correct = pos1 + (n0 - pos0): one integer suffices
        else:
            keys = pos[1] * (n0 + 1) + pos[0]
        keys = keys.expand(torch.broadcast_shapes(pos[0].shape, pos[1].shape))
        return self._table[keys], keys

    def _build_table(self) -> torch.Tensor | None:
        """Binary heads: the score of every possible (pos1, pos0) count pair, if few enough.

        A binary metric depends only on how many examples of each class are predicted 1, so
        one gather replaces the float64 metric arithmetic on 75M triples (and binning the
        table once replaces binning every score). Entries come from the same formula as the
        direct path, so scores are bitwise identical either way.
        """
        if not self.binary:
            return None
        n0, n1 = (int(v) for v in self.class_sizes)
        dev = self.device
        if self.metric == "accuracy":
            diff = torch.arange(-n0, n1 + 1, device=dev)
            pos1, pos0 = diff.clamp(min=0), (-diff).clamp(min=0)
        elif (n0 + 1) * (n1 + 1) <= _MAX_TABLE:
            pos1 = torch.arange(n1 + 1, device=dev).repeat_interleave(n0 + 1)
            pos0 = torch.arange(n0 + 1, device=dev).repeat(n1 + 1)
        else:
            return None
        counts = [pos0 if cls == 0 else pos1 for cls, _ in self._segments]
        return self._metric_direct(counts)

    def _metric_direct(self, counts: list[torch.Tensor]) -> torch.Tensor:
        """Metric from per-segment predicted-class counts (one entry per non-empty class).

        ``counts[m]`` is ``[...]`` (binary: how many predicted 1) or ``[C-1, ...]`` (how many
        predicted each class 0..C-2); the last class gets the rest of the segment.
        """
        c = self.n_classes
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        cells: list[list[torch.Tensor]] = [[zero] * c for _ in range(c)]
        for (cls, _), cnt in zip(self._segments, counts, strict=True):
            size = float(self.class_sizes[cls])
            cnt = cnt.to(torch.float64)
            if self.binary:
                cells[cls] = [size - cnt, cnt]
            else:
                row = list(cnt.unbind(0))
                cells[cls] = row + [size - sum(row)]
        return metric_from_cells(cells, self.metric)

    def _score_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Scores of subsets ``idx [M, s]`` (rows sorted ascending), float64 ``[M]``."""
        if self.regression:
            num = self._cov_y[idx].sum(1)
            var = self._cov[idx[:, :, None], idx[:, None, :]].sum((1, 2))
            scale = self._scale[idx].sum(1)
            return self._pearson(num, var, scale)
        counts = []
        for _, x in self._segments:
            logits = self._canonical_sum(x, idx)
            if self.binary:
                counts.append((logits > 0).sum(-1))
            else:
                masks = _first_max_masks(list(logits))
                counts.append(torch.stack([m.sum(-1) for m in masks], 0))
        return self._metric(counts)

    def _canonical_sum(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Masked-head logits of subsets, summed in the same order as the exhaustive kernels.

        float32 addition is not associative; the order (d_{s[-2]} + bias), then d_{s[0]}, ...,
        d_{s[-3]}, then d_{s[-1]} reproduces the pair/triple blocks bit for bit, so a subset
        gets the same score (and tie order) whichever path scores it.
        """
        size = idx.shape[1]
        take = lambda p: x.index_select(-2, idx[:, p])  # noqa: E731 - [.., M, n]
        bias = self._bias_for(x)
        if size == 1:
            return take(0) + bias
        out = take(size - 2) + bias
        for p in range(size - 2):
            out = out + take(p)
        return out + take(size - 1)

    def _pearson(self, num: torch.Tensor, var: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        const = var <= _PEARSON_REL_TOL * scale * scale
        if self._yy <= 0:
            return torch.zeros_like(num)
        r = num / (var.clamp_min(1e-300) * self._yy).sqrt()
        return torch.where(const, 0.0, r.clamp(-1.0, 1.0))

    def will_compile(self, size: int) -> bool:
        """Whether the exhaustive search of ``size``-subsets runs the compiled kernel."""
        return not self.regression and self._use_compile(n_combinations(self.n_dims, size))

    def _use_compile(self, n_combos: int) -> bool:
        """Whether a job over ``n_combos`` combinations should use the compiled kernels."""
        if _COMPILED.broken is not None:
            return False
        if self.backend == "eager":
            return False
        if self.backend == "compile":
            return True
        kind = "binary" if self.binary else "multiclass"
        if (kind, self.device.type) in _COMPILED.ready:
            return True  # already paid for in this process
        if self.binary:
            rate = _EAGER_RATE_BINARY
        else:
            rate = _EAGER_RATE_MULTICLASS / (self.n_classes - 1)
        return n_combos * self.n_examples / rate >= COMPILE_MIN_EAGER_SECONDS

    def _block_counts(self, a: torch.Tensor, b: torch.Tensor, compiled: bool) -> torch.Tensor:
        """Counts for the dense block ``left rows a x right rows b`` of one segment."""
        kind = "binary" if self.binary else "multiclass"
        rows_a, rows_b = a.shape[-2], b.shape[-2]
        if compiled and min(rows_a, rows_b, a.shape[-1]) >= 2:
            # Sizes 0/1 would make dynamo specialise and recompile; those tiny blocks run eager.
            # A view (with a ._base) and a fresh tensor get different guards: always pass
            # fresh contiguous tensors so one compiled graph serves every call.
            b = b.clone(memory_format=torch.contiguous_format)
            if rows_a < rows_b:
                # Inductor parallelises over the first operand's rows; keep it the long side
                # (the transposed copy is small next to the kernel and keeps later ops fast).
                out = _COMPILED.run(kind, b, a)
                if out is not None:
                    self.kernel_runs["compiled"] += 1
                    return out.transpose(-2, -1).contiguous()
            else:
                out = _COMPILED.run(kind, a, b)
                if out is not None:
                    self.kernel_runs["compiled"] += 1
                    return out
        self.kernel_runs["eager"] += 1
        return _KERNELS[kind][1](a, b)

    def _classification_block(
        self, left: Callable[[torch.Tensor], torch.Tensor], lo: int, compiled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and table keys) of ``left(x)[a] + x[lo + b]`` for every segment's ``x``."""
        counts = []
        for _, x in self._segments:
            a = left(x).contiguous()
            b = x[..., lo:, :]
            counts.append(self._block_counts(a, b, compiled))
        return self._metric_and_keys(counts)

    def _pair_blocks(self, rows: int = 32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(i0, i1, scores)``: the scores of all pairs ``(i, j)`` with ``i0 <= i < i1``
        and ``j > i``, in lexicographic order; consecutive blocks tile the pairs in rank order.
        """
        k_dims = self.n_dims
        compiled = not self.regression and self._use_compile(n_combinations(k_dims, 2))
        for i0 in range(0, k_dims - 1, rows):
            i1 = min(i0 + rows, k_dims - 1)
            if self.regression:
                cov = self._cov
                diag = torch.diagonal(cov)
                num = self._cov_y[i0:i1, None] + self._cov_y[None, i0 + 1 :]
                var = diag[i0:i1, None] + diag[None, i0 + 1 :] + 2 * cov[i0:i1, i0 + 1 :]
                scale = self._scale[i0:i1, None] + self._scale[None, i0 + 1 :]
                block = self._pearson(num, var, scale)
            else:
                block = self._classification_block(
                    lambda x, i0=i0, i1=i1: x[..., i0:i1, :] + self._bias_for(x),
                    i0 + 1,
                    compiled,
                )[0]
            # Row i keeps columns j > i: column index (j - i0 - 1) >= i - i0.
            r = torch.arange(i1 - i0, device=self.device)[:, None]
            c = torch.arange(k_dims - i0 - 1, device=self.device)[None, :]
            yield i0, i1, block[c >= r]

    def _bias_for(self, x: torch.Tensor) -> torch.Tensor:
        # Binary contributions are [K, n] and the bias a scalar; multi-class [C, K, n] with [C, 1].
        return self._bias if self.binary else self._bias[:, :, None]

    def _triple_blocks(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(j, scores [j, K-1-j], table keys or None)``: all triples ``(i, j, l)``
        with middle dimension j."""
        k_dims = self.n_dims
        compiled = not self.regression and self._use_compile(n_combinations(k_dims, 3))
        if self.regression:
            cov, cy, sc = self._cov, self._cov_y, self._scale
            diag = torch.diagonal(cov)
        for j in range(1, k_dims - 1):
            if self.regression:
                num = (cy[:j] + cy[j])[:, None] + cy[None, j + 1 :]
                left = diag[:j] + diag[j] + 2 * cov[:j, j]
                right = diag[j + 1 :] + 2 * cov[j, j + 1 :]
                var = left[:, None] + right[None, :] + 2 * cov[:j, j + 1 :]
                scale = (sc[:j] + sc[j])[:, None] + sc[None, j + 1 :]
                yield j, self._pearson(num, var, scale), None
            else:
                # Same order as _canonical_sum: (d_j + bias) + d_i, then + d_l.
                def left(x: torch.Tensor, j: int = j) -> torch.Tensor:
                    return (x[..., j : j + 1, :] + self._bias_for(x)) + x[..., :j, :]

                yield j, *self._classification_block(left, j + 1, compiled)


class _RunningTopK:
    """Top-k by (score descending, dims ascending) over a stream of blocks."""

    def __init__(self, k: int, size: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.dims = np.empty((0, size), dtype=np.int64)
        self.scores = np.empty(0, dtype=np.float64)

    def update_block(self, block: torch.Tensor, j: int) -> None:
        """Merge a triple block ``[i, l]`` (triples ``(i, j, j+1+l)``, row-major = lex order)."""
        flat = block.reshape(-1)
        if flat.numel() == 0:
            return
        k = min(self.k, flat.numel())
        kth = torch.topk(flat, k).values[-1]
        if len(self.scores) == self.k and float(kth) < self.scores[-1]:
            thr = torch.tensor(self.scores[-1], dtype=flat.dtype, device=flat.device)
        else:
            thr = kth
        above = torch.nonzero(flat > thr).reshape(-1)
        # Among entries tied at the threshold only the first ones in flat (= lex) order can win.
        tied = torch.nonzero(flat == thr).reshape(-1)[: max(0, k - above.numel())]
        idx = torch.cat([above, tied]).cpu().numpy()
        if idx.size == 0:
            return
        width = block.shape[1]
        dims = np.stack([idx // width, np.full_like(idx, j), j + 1 + idx % width], axis=1)
        self.merge(dims, flat[torch.as_tensor(idx, device=flat.device)].cpu().numpy())

    def merge(self, dims: np.ndarray, scores: np.ndarray) -> None:
        dims = np.concatenate([self.dims, dims])
        scores = np.concatenate([self.scores, scores])
        order = _rank_order(dims, scores)[: self.k]
        self.dims, self.scores = dims[order], scores[order]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dims.copy(), self.scores.copy()


def _rank_order(dims: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, then dims lexicographically ascending."""
    keys = [dims[:, p] for p in range(dims.shape[1] - 1, -1, -1)] + [-scores]
    return np.lexsort(keys)


# --------------------------------------------------------------------------- searches


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


def top_k(combos: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best subsets by (score descending, dims ascending)."""
    order = _rank_order(np.asarray(combos), np.asarray(scores))[:k]
    return np.asarray(combos)[order], np.asarray(scores)[order]


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
    chosen = set(triples[eff].tolist())
    if len(chosen) < 2:
        # Rank every dimension by its largest drop, then id, and top up to two.
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
    local = all_combinations(len(effective), 2)
    pair_dims = effective[local]
    pv = valid.score(pair_dims)
    order = _rank_order(pair_dims, pv)
    pair_dims, pv = pair_dims[order], pv[order]
    pt = test.score(pair_dims) if test is not None else None
    ablation = pd.DataFrame(
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
    n_layers = len(layers_valid)
    rows = []
    combos = None
    for layer in range(n_layers):
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
        best_dims, best = top_k(combos, scores, 1)
        degenerate = bool(scores.std() <= DEGENERATE_STD)
        row: dict[str, object] = {
            "layer": layer,
            "n_pairs": len(scores),
            "degenerate": degenerate,
            "all_dims": sv.score_all_dims(),
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
            row["best_test"] = float(st.score(best_dims)[0]) if st is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
