"""Counting kernels of the subset search: metrics from confusion counts, score histograms and
the block kernels that count, for a dense block of subsets, how many examples each predicts.

Binary classification uses the logit difference ``d = (W1 - W0) . h + (b1 - b0)``; the head's
argmax picks class 1 iff ``d > 0`` (argmax keeps the first maximum, so a tie is class 0).
Multi-class classification keeps one contribution row per class and counts, per class, the
examples where it beats every earlier class strictly and every later one or ties it (argmax).
The block kernel (``sum_n [a[i, n] + b[l, n] > 0]``) is one fused loop under ``torch.compile``
(Inductor C++ on CPU, Triton on CUDA) when the amount of work pays for the compile; otherwise,
or when compiling fails, the same torch code runs eagerly in cache-sized chunks. On AVX-512
CPUs the binary kernel runs as hand-tiled C instead (``native``); these torch forms are its
reference in the tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tuneatlas.analysis.subsets.combinatorics import Array

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "mcc", "f1", "macro_f1")
REGRESSION_METRICS: tuple[str, ...] = ("pearson",)

# Eager chunks hold this many float32 temporaries (4 MB: stays in L3 and keeps the per-call
# overhead of torch small relative to the work).
EAGER_CHUNK_ELEMENTS = 1 << 20
# Multi-class chunks allocate C logits and C-1 masks per chunk; smaller chunks stay cheap to
# allocate (below glibc's mmap threshold) and cache-resident.
EAGER_CHUNK_ELEMENTS_MULTICLASS = 1 << 17


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
    add_histogram(counts, torch.as_tensor(np.asarray(scores), dtype=torch.float64), edges)
    return counts


def add_histogram(counts: np.ndarray, scores: torch.Tensor, edges: np.ndarray) -> None:
    n_bins = len(edges) - 1
    idx = histogram_bins(scores.reshape(-1).to(torch.float64), edges)
    counts += torch.bincount(idx, minlength=n_bins + 1)[:n_bins].cpu().numpy()


def histogram_bins(flat: torch.Tensor, edges: np.ndarray) -> torch.Tensor:
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
    rows = max(1, min(a.shape[0], EAGER_CHUNK_ELEMENTS // max(1, b.shape[0] * a.shape[1])))
    buf = torch.empty(rows, b.shape[0], a.shape[1], dtype=torch.float32, device=a.device)
    for r0 in range(0, a.shape[0], rows):
        chunk = a[r0 : r0 + rows]
        x = buf[: chunk.shape[0]]
        torch.add(chunk[:, None, :], b[None, :, :], out=x)
        torch.sum(x.gt_(0), dim=-1, out=out[r0 : r0 + rows])
    return out


def first_max_masks(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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
    return torch.stack([m.to(torch.float32).sum(-1) for m in first_max_masks(logits)], dim=0)


def _multiclass_counts_eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eager twin of :func:`_multiclass_counts`, chunked over rows."""
    n_classes, rows_a, n = a.shape
    out = torch.empty(n_classes - 1, rows_a, b.shape[1], dtype=torch.float32, device=a.device)
    rows = max(1, EAGER_CHUNK_ELEMENTS_MULTICLASS // max(1, b.shape[1] * n))
    for r0 in range(0, rows_a, rows):
        logits = [a[c, r0 : r0 + rows, None, :] + b[c, None, :, :] for c in range(n_classes)]
        for k, mask in enumerate(first_max_masks(logits)):
            torch.sum(mask, dim=-1, out=out[k, r0 : r0 + rows])
    return out


KERNELS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
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
            fn = torch.compile(KERNELS[kind][0], dynamic=True, fullgraph=True, options=options)
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


COMPILED = _Compiled()


def compile_error() -> str | None:
    """Why ``torch.compile`` was given up in this process (then everything runs eager)."""
    return COMPILED.broken
