"""The regression head's subset scores in closed form: Pearson correlation of the masked head.

``pred_S = sum_{j in S} W_j h_j + b``, so ``cov(pred_S, y)`` and ``var(pred_S)`` are sums over a
K-vector and a K x K matrix and every pair/triple costs O(1), independent of N.
"""

from __future__ import annotations

import numpy as np
import torch

# A prediction whose variance is below this fraction of its squared scale is constant up to
# rounding; metrics.pearson scores constant predictions 0.
_PEARSON_REL_TOL = 1e-12


class PearsonClosedForm:
    """Pearson scores of subsets from one split's float64 moments (``h [N, K]``, head ``w [K]``)."""

    def __init__(self, h: torch.Tensor, y: np.ndarray, w: torch.Tensor) -> None:
        # Closed form in float64: pred_S - mean = sum_{j in S} W_j (h_j - mean_j), hence
        # cov(pred_S, y) = sum_S cy_j and var(pred_S) = sum_{S x S} M_jl.
        h64 = h.to(torch.float64)
        hc = h64 - h64.mean(0)
        yc = torch.as_tensor(y.astype(np.float64), device=h.device)
        yc = yc - yc.mean()
        w64 = w.to(torch.float64)
        self.cov_y = w64 * (hc.T @ yc)  # [K]
        self.cov = (hc.T @ hc) * w64[:, None] * w64[None, :]  # [K, K]
        self.yy = float(yc @ yc)
        # Scale of each contribution, for the "constant prediction" tolerance.
        self.scale = w64.abs() * h64.pow(2).mean(0).sqrt()

    def pearson(self, num: torch.Tensor, var: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Correlation from ``cov(pred, y)``, ``var(pred)`` and the prediction's scale."""
        const = var <= _PEARSON_REL_TOL * scale * scale
        if self.yy <= 0:
            return torch.zeros_like(num)
        r = num / (var.clamp_min(1e-300) * self.yy).sqrt()
        return torch.where(const, 0.0, r.clamp(-1.0, 1.0))

    def score_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Scores of subsets ``idx [M, s]``, float64 ``[M]``."""
        num = self.cov_y[idx].sum(1)
        var = self.cov[idx[:, :, None], idx[:, None, :]].sum((1, 2))
        scale = self.scale[idx].sum(1)
        return self.pearson(num, var, scale)

    def pair_block(self, i0: int, i1: int) -> torch.Tensor:
        """Scores of pairs ``(i, j)``, ``i0 <= i < i1``, ``j > i0``, dense ``[i1-i0, K-1-i0]``."""
        cov = self.cov
        diag = torch.diagonal(cov)
        num = self.cov_y[i0:i1, None] + self.cov_y[None, i0 + 1 :]
        var = diag[i0:i1, None] + diag[None, i0 + 1 :] + 2 * cov[i0:i1, i0 + 1 :]
        scale = self.scale[i0:i1, None] + self.scale[None, i0 + 1 :]
        return self.pearson(num, var, scale)

    def triple_block(self, j: int) -> torch.Tensor:
        """Scores of all triples ``(i, j, l)``, ``i < j < l``, as ``[j, K-1-j]``."""
        cov, cy, sc = self.cov, self.cov_y, self.scale
        diag = torch.diagonal(cov)
        num = (cy[:j] + cy[j])[:, None] + cy[None, j + 1 :]
        left = diag[:j] + diag[j] + 2 * cov[:j, j]
        right = diag[j + 1 :] + 2 * cov[j, j + 1 :]
        var = left[:, None] + right[None, :] + 2 * cov[:j, j + 1 :]
        scale = (sc[:j] + sc[j])[:, None] + sc[None, j + 1 :]
        return self.pearson(num, var, scale)
