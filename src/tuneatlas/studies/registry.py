"""Artifact registry: artifact ID -> table builder and figure plotter.

A builder takes the artifact's target spec (runs, embeddings, params from the plan) and the
results root and returns a tidy DataFrame; a plotter draws the figure(s) from that table alone,
so every figure has a table of exactly the data it plots. `input_spec_hashes` names the run specs
a table was built from (its provenance metadata).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tuneatlas.catalogue import get_artifact
from tuneatlas.io import read_parquet_meta, stable_hash

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


def input_spec_hashes(target: dict[str, Any], results: Path) -> dict[str, str]:
    """Run id -> spec hash of every run a table is built from (its runs, embeddings and
    subsets): the eval.parquet metadata's `spec_hash`, else the hash of the run's spec.yaml."""
    runs = sorted({r for key in ("runs", "embeddings", "subsets") for r in target.get(key) or ()})
    hashes: dict[str, str] = {}
    for run in runs:
        run_dir = results / "runs" / run
        eval_file, spec_file = run_dir / "eval.parquet", run_dir / "spec.yaml"
        found = read_parquet_meta(eval_file).get("spec_hash") if eval_file.is_file() else None
        if not found and spec_file.is_file():
            found = stable_hash(yaml.safe_load(spec_file.read_text()))
        hashes[run] = found or "unknown"
    return hashes
