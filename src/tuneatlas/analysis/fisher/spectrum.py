"""Spectra of per-layer Grams: eigenvalues, effective ranks (erank) and the relative error
of one spectrum against a reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ERANK_MASS = 0.99


def eigenvalues(grams: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of each symmetric Gram ([..., N, N] -> [..., N]), float64, descending."""
    g = grams.double()
    g = (g + g.transpose(-1, -2)) / 2
    return torch.linalg.eigvalsh(g).flip(-1)


def effective_rank(eigvals: torch.Tensor, mass: float = ERANK_MASS) -> torch.Tensor:
    """erank: the smallest j whose j largest eigenvalues hold more than `mass` of their sum
    ([..., N] -> [...], int64). Negative rounding noise is clipped to 0; an all-zero spectrum
    has erank 0."""
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    e = eigvals.double().clamp_min(0).sort(-1, descending=True).values
    total = e.sum(-1, keepdim=True)
    held = e.cumsum(-1) > mass * total
    j = held.double().argmax(-1) + 1  # first index where the mass is exceeded
    return torch.where(total.squeeze(-1) > 0, j, torch.zeros_like(j))


@dataclass
class FisherSpectrum:
    """Per-layer eigenvalues [L, N] (descending), erank [L], normalised erank [L] (erank / N)
    and the whole-model rank (sum of the per-layer eranks)."""

    eigenvalues: torch.Tensor
    erank: torch.Tensor
    normalised_erank: torch.Tensor
    model_rank: int


def fisher_spectrum(grams: torch.Tensor, mass: float = ERANK_MASS) -> FisherSpectrum:
    """Eigenvalues and effective ranks of per-layer Grams [L, N, N]."""
    ev = eigenvalues(grams)
    er = effective_rank(ev, mass)
    n = grams.shape[-1]
    return FisherSpectrum(ev, er, er.double() / n, int(er.sum()))


def relative_error(eigvals: torch.Tensor, reference: torch.Tensor, floor: float = 1e-6) -> float:
    """Largest |eig - ref| / ref over the reference eigenvalues above `floor` times the
    largest one of their layer ([L, N] each, descending)."""
    ref = reference.double()
    keep = ref > floor * ref[..., :1].clamp_min(0)
    if not bool(keep.any()):
        return 0.0
    err = (eigvals.double() - ref).abs() / ref.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(err[keep].max())
