"""``SubsetScorer``: one split's per-dimension contributions through a fixed linear head.

Logits are decomposed into per-dimension *contributions* ``W[c, k] * h[n, k]`` that are summed
per subset instead of re-running the head. MCC / F1 / macro-F1 / accuracy follow from
vectorised confusion counts (for a binary head through a table of the score of every possible
count pair); regression heads use the closed form of ``tuneatlas.analysis.subsets.pearson``.

Exhaustive triples are enumerated by their *middle* dimension ``j``: all triples ``(i, j, l)``
with ``i < j < l`` form one dense ``[j, K-1-j]`` block ``left[i] + right[l]``, so no work is wasted
on invalid index orders and memory stays bounded; a running top-k and a histogram are updated
block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch

from tuneatlas.analysis.subsets import kernels, native
from tuneatlas.analysis.subsets.combinatorics import Array, n_combinations
from tuneatlas.analysis.subsets.kernels import (
    CLASSIFICATION_METRICS,
    COMPILED,
    KERNELS,
    REGRESSION_METRICS,
    add_histogram,
    first_max_masks,
    histogram_bins,
    histogram_edges,
    metric_from_cells,
)
from tuneatlas.analysis.subsets.pearson import PearsonClosedForm
from tuneatlas.analysis.subsets.ranking import RunningTopK

Backend = Literal["auto", "native", "compile", "eager"]
KernelMode = Literal["native", "compiled", "eager"]

# backend="auto" compiles when the eager kernels would need at least this long: a compile costs
# ~3-5 s from a warm Inductor cache and ~20 s cold on 2 cores, the fused kernel then runs
# 5-15x faster than eager torch.
COMPILE_MIN_EAGER_SECONDS = 10.0
# Eager throughput used for that estimate, in (combinations x examples) per second, measured on
# 2 shared cores: binary ~1.5e9; multi-class ~2.5e8 / (C - 1) (C-1 masks of C-1 comparisons).
_EAGER_RATE_BINARY = 1.5e9
_EAGER_RATE_MULTICLASS = 2.5e8
# Binary heads tabulate the score of every (pos1, pos0) count pair up to this many entries.
_MAX_TABLE = 1 << 21


def _as_tensor(x: Array, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _head_tensors(
    hidden: Array, weight: Array, bias: Array, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``hidden [N, K]``, ``weight [C, K]`` and ``bias [C]`` as float32 tensors, checked."""
    h = _as_tensor(hidden, torch.float32, device)
    w = _as_tensor(weight, torch.float32, device)
    bvec = _as_tensor(bias, torch.float32, device).reshape(-1)
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
    return h, w, bvec


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
        backend: ``"native"`` runs binary heads' block kernels on the CPU in the hand-tiled C
            kernel of ``native`` (other heads and devices as ``"auto"``); ``"compile"`` fuses
            block kernels with ``torch.compile``; ``"eager"`` never compiles; ``"auto"`` is
            ``"native"`` where the C kernel builds and applies, else compiles when the eager
            kernels would need at least ``COMPILE_MIN_EAGER_SECONDS`` or the kernel is already
            compiled in this process.

    Attributes:
        kernel_runs: how many exhaustive-search block kernels ran ``"native"``, ``"compiled"``
            and ``"eager"`` on this scorer (blocks too small to compile, or every block after a
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
        if backend not in ("auto", "native", "compile", "eager"):
            raise ValueError(f"backend must be auto, native, compile or eager, got {backend!r}")
        self.backend: Backend = backend
        self.kernel_runs: dict[str, int] = {"native": 0, "compiled": 0, "eager": 0}
        self.metric = metric
        self.regression = regression

        h, w, bvec = _head_tensors(hidden, weight, bias, self.device)
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
            self._closed_form = PearsonClosedForm(h, y, w[0])
            self._table = None
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
        chunk = max(1, kernels.EAGER_CHUNK_ELEMENTS // max(1, per_row * self.n_classes))
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
        top = RunningTopK(k, 3)
        counts = None if edges is None else np.zeros(len(edges) - 1, dtype=np.int64)
        # Every score is a table entry: count the keys, then bin the table once at the end.
        key_counts = None
        if edges is not None and self._table is not None:
            key_counts = torch.zeros(len(self._table), dtype=torch.int64, device=self.device)
        for j, block, keys in self._triple_blocks():
            if counts is not None:
                if keys is not None and key_counts is not None:
                    key_counts += torch.bincount(keys.reshape(-1), minlength=len(self._table))
                else:
                    add_histogram(counts, block, edges)
            top.update_block(block, j)
        if key_counts is not None:
            n_bins = len(edges) - 1
            per_bin = torch.zeros(n_bins + 1, dtype=torch.int64, device=self.device)
            per_bin.index_add_(0, histogram_bins(self._table, edges), key_counts)
            counts += per_bin[:n_bins].cpu().numpy()
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
        # int32 keys: the table has at most _MAX_TABLE entries, and the key arithmetic on 75M
        # triples moves half the bytes of int64 (the native kernel's counts are int32 already).
        pos = [torch.zeros((), dtype=torch.int32, device=self.device)] * 2
        for (cls, _), cnt in zip(self._segments, counts, strict=True):
            pos[cls] = cnt.to(torch.int32)
        n0 = int(self.class_sizes[0])
        if self.metric == "accuracy":
            # correct = pos1 + (n0 - pos0): one integer suffices
            keys = torch.sub(pos[1], pos[0]).add_(n0)
        else:
            keys = torch.mul(pos[1], n0 + 1).add_(pos[0])
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
            return self._closed_form.score_rows(idx)
        counts = []
        for _, x in self._segments:
            logits = self._canonical_sum(x, idx)
            if self.binary:
                counts.append((logits > 0).sum(-1))
            else:
                masks = first_max_masks(list(logits))
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

    def will_compile(self, size: int) -> bool:
        """Whether the exhaustive search of ``size``-subsets runs the compiled kernel."""
        return self._kernel_mode(n_combinations(self.n_dims, size)) == "compiled"

    def _kernel_mode(self, n_combos: int) -> KernelMode | None:
        """Which block kernel a job over ``n_combos`` combinations runs (None: regression)."""
        if self.regression:
            return None
        if self.backend in ("auto", "native") and self._native_applies():
            return "native"
        return "compiled" if self._use_compile(n_combos) else "eager"

    def _native_applies(self) -> bool:
        # The C kernel is binary-only and CPU-only; building it (~0.3 s) happens on first use.
        return self.binary and self.device.type == "cpu" and native.available()

    def _use_compile(self, n_combos: int) -> bool:
        """Whether a job over ``n_combos`` combinations should use the compiled kernels."""
        if COMPILED.broken is not None:
            return False
        if self.backend == "eager":
            return False
        if self.backend == "compile":
            return True
        kind = "binary" if self.binary else "multiclass"
        if (kind, self.device.type) in COMPILED.ready:
            return True  # already paid for in this process
        if self.binary:
            rate = _EAGER_RATE_BINARY
        else:
            rate = _EAGER_RATE_MULTICLASS / (self.n_classes - 1)
        return n_combos * self.n_examples / rate >= COMPILE_MIN_EAGER_SECONDS

    def _block_counts(self, a: torch.Tensor, b: torch.Tensor, mode: KernelMode) -> torch.Tensor:
        """Counts for the dense block ``left rows a x right rows b`` of one segment."""
        kind = "binary" if self.binary else "multiclass"
        rows_a, rows_b = a.shape[-2], b.shape[-2]
        if mode == "native":
            self.kernel_runs["native"] += 1
            return native.binary_counts(a, b)
        if mode == "compiled" and min(rows_a, rows_b, a.shape[-1]) >= 2:
            # Sizes 0/1 would make dynamo specialise and recompile; those tiny blocks run eager.
            # A view (with a ._base) and a fresh tensor get different guards: always pass
            # fresh contiguous tensors so one compiled graph serves every call.
            b = b.clone(memory_format=torch.contiguous_format)
            if rows_a < rows_b:
                # Inductor parallelises over the first operand's rows; keep it the long side
                # (the transposed copy is small next to the kernel and keeps later ops fast).
                out = COMPILED.run(kind, b, a)
                if out is not None:
                    self.kernel_runs["compiled"] += 1
                    return out.transpose(-2, -1).contiguous()
            else:
                out = COMPILED.run(kind, a, b)
                if out is not None:
                    self.kernel_runs["compiled"] += 1
                    return out
        self.kernel_runs["eager"] += 1
        return KERNELS[kind][1](a, b)

    def _classification_block(
        self, left: Callable[[torch.Tensor], torch.Tensor], lo: int, mode: KernelMode
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and table keys) of ``left(x)[a] + x[lo + b]`` for every segment's ``x``."""
        counts = []
        for _, x in self._segments:
            a = left(x).contiguous()
            b = x[..., lo:, :]
            counts.append(self._block_counts(a, b, mode))
        return self._metric_and_keys(counts)

    def _pair_blocks(self, rows: int = 32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(i0, i1, scores)``: the scores of all pairs ``(i, j)`` with ``i0 <= i < i1``
        and ``j > i``, in lexicographic order; consecutive blocks tile the pairs in rank order.
        """
        k_dims = self.n_dims
        mode = self._kernel_mode(n_combinations(k_dims, 2))
        for i0 in range(0, k_dims - 1, rows):
            i1 = min(i0 + rows, k_dims - 1)
            if self.regression:
                block = self._closed_form.pair_block(i0, i1)
            else:
                block = self._classification_block(
                    lambda x, i0=i0, i1=i1: x[..., i0:i1, :] + self._bias_for(x),
                    i0 + 1,
                    mode,
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
        mode = self._kernel_mode(n_combinations(k_dims, 3))
        for j in range(1, k_dims - 1):
            if self.regression:
                yield j, self._closed_form.triple_block(j), None
            else:
                # Same order as _canonical_sum: (d_j + bias) + d_i, then + d_l.
                def left(x: torch.Tensor, j: int = j) -> torch.Tensor:
                    return (x[..., j : j + 1, :] + self._bias_for(x)) + x[..., :j, :]

                yield j, *self._classification_block(left, j + 1, mode)
