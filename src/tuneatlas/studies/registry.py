"""Artifact registry: artifact ID -> table builder and figure plotter.

A builder takes the artifact's target spec (runs, embeddings, params from the plan) and the
results root and returns a tidy DataFrame; a plotter draws the figure(s) from that table alone,
so every figure has a table of exactly the data it plots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tuneatlas.catalogue import get_artifact

Builder = Callable[[dict[str, Any], Path], pd.DataFrame]
Plotter = Callable[[pd.DataFrame, list[Path]], None]


def _registry(study: str | None = None) -> tuple[dict[str, Builder], dict[str, Plotter]]:
    """Table builders and plotters of one study ("S2"), or of all: a table job imports only its
    own study's module (some import seconds of libraries the others never need)."""
    import importlib

    builders: dict[str, Builder] = {}
    plotters: dict[str, Plotter] = {}
    for name in [study] if study else ["S1", "S2", "S3", "S4", "S5"]:
        module = importlib.import_module(f"tuneatlas.studies.{name.lower()}")
        builders.update(module.TABLES)
        plotters.update(module.FIGURES)
    return builders, plotters


def build_table(artifact_id: str, spec: dict[str, Any], results: Path) -> pd.DataFrame:
    artifact = get_artifact(artifact_id)
    builders, _ = _registry(artifact.study)
    df = builders[artifact.id](spec, results)
    missing = [c for c in artifact.columns if c not in df.columns]
    if missing:
        raise ValueError(f"table {artifact.id} lacks catalogued columns {missing}")
    return df


def plot_artifact(artifact_id: str, table: Path, outputs: list[Path]) -> None:
    artifact = get_artifact(artifact_id)
    _, plotters = _registry(artifact.study)
    plotters[artifact.id](pd.read_parquet(table), outputs)
