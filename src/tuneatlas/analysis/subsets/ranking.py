"""The subset search's one order (score descending, then dims ascending) and its top-k."""

from __future__ import annotations

import numpy as np
import torch


class RunningTopK:
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
        if len(self.scores) == self.k and float(flat.max()) < self.scores[-1]:
            # Nothing reaches the current k-th score (ties might still win on ids: not skipped);
            # after the first blocks this is most blocks, and a max is far cheaper than a topk.
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
        order = rank_order(dims, scores)[: self.k]
        self.dims, self.scores = dims[order], scores[order]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dims.copy(), self.scores.copy()


def rank_order(dims: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices sorting by score descending, then dims lexicographically ascending."""
    keys = [dims[:, p] for p in range(dims.shape[1] - 1, -1, -1)] + [-scores]
    return np.lexsort(keys)


def top_k(combos: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best subsets by (score descending, dims ascending)."""
    order = rank_order(np.asarray(combos), np.asarray(scores))[:k]
    return np.asarray(combos)[order], np.asarray(scores)[order]
