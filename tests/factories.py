"""Builders of the specs the tests train and write: one place for a tiny run's defaults."""

from __future__ import annotations

from typing import Any

from tuneatlas.spec import TrainSpec

# a fine-tuning run a tiny model finishes in seconds; every other field keeps TrainSpec's default
TINY_TRAIN = {
    "run": "r",
    "task": "sst2",
    "dataset": "d",
    "model": "m",
    "epochs": 2,
    "batch_size": 16,
    "max_length": 16,
}


def train_spec(**overrides: Any) -> TrainSpec:
    """A `TrainSpec` of a tiny run (`TINY_TRAIN`), with `overrides` replacing any field."""
    return TrainSpec(**{**TINY_TRAIN, **overrides})
