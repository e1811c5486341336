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


def _registry() -> tuple[dict[str, Builder], dict[str, Plotter]]:
    from tuneatlas.studies import s1, s2, s3, s5

    builders: dict[str, Builder] = {}
    plotters: dict[str, Plotter] = {}
    for module in (s1, s2, s3, s5):
        builders.update(module.TABLES)
        plotters.update(module.FIGURES)
    return builders, plotters


def build_table(artifact_id: str, spec: dict[str, Any], results: Path) -> pd.DataFrame:
    artifact = get_artifact(artifact_id)
    builders, _ = _registry()
    if artifact.id not in builders:
        raise ValueError(
            f"artifact {artifact.id} has no table builder yet ({artifact.study} is planned)"
        )
    df = builders[artifact.id](spec, results)
    missing = [c for c in artifact.columns if c not in df.columns]
    if missing:
        raise ValueError(f"table {artifact.id} lacks catalogued columns {missing}")
    return df


def plot_artifact(artifact_id: str, table: Path, outputs: list[Path]) -> None:
    artifact = get_artifact(artifact_id)
    _, plotters = _registry()
    if artifact.id not in plotters:
        raise ValueError(f"artifact {artifact.id} has no figure yet ({artifact.study} is planned)")
    plotters[artifact.id](pd.read_parquet(table), outputs)
