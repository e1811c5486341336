"""The training hooks a fine-tuning run's spec asks for: S3's in-loop embedding capture and S2's
in-loop Fisher spectra and polar trajectory, assembled from the `TrainSpec` alone."""

from __future__ import annotations

from typing import Any

from tuneatlas.analysis.capture import EmbeddingCapture
from tuneatlas.analysis.fisher.trace import FisherTrace
from tuneatlas.analysis.polar import PolarTrace
from tuneatlas.spec import TrainSpec


def training_hooks(spec: TrainSpec) -> list[Any]:
    """The engine hooks of `spec`, in the order the loop calls them (none when all are off)."""
    hooks: list[Any] = []
    if spec.capture.every:
        hooks.append(EmbeddingCapture(spec.capture))
    if spec.fisher.every:
        hooks.append(FisherTrace(spec.fisher))
    if spec.polar_every:
        hooks.append(PolarTrace(spec.polar_every))
    return hooks
