"""The files of one run's S1 subset scan: their names, typed columns, the rows the scan writes
and reading them back (schemas in docs/internals.md, "Files on disk").

Kept apart from the scan itself so that the workflow (which lists ``SCAN_FILES`` as rule
outputs) and the S1 table builders read these names without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tuneatlas.analysis.subsets.effective import EffectiveDimensions
    from tuneatlas.analysis.subsets.search import SubsetSearch

#: Files of one scan, always all written (a part that is off leaves an empty, typed table).
SCAN_FILES: tuple[str, ...] = (
    "summary.parquet",
    "top.parquet",
    "histograms.parquet",
    "effective.parquet",
    "layers.parquet",
)

_COLUMNS: dict[str, dict[str, str]] = {
    "summary": {
        "split": "str",
        "task": "str",
        "metric": "str",
        "regression": "bool",
        "n_examples": "int64",
        "n_dims": "int64",
        "n_classes": "int64",
        "all_dims": "float64",
    },
    "top": {
        "search": "int64",
        "size": "int64",
        "mode": "str",
        "sample_size": "int64",
        "seed": "Int64",
        "rank": "int64",
        "dims": "str",
        "split": "str",
        "value": "float64",
    },
    "histograms": {
        "search": "int64",
        "size": "int64",
        "mode": "str",
        "sample_size": "int64",
        "split": "str",
        "bin_left": "float64",
        "bin_right": "float64",
        "count": "int64",
    },
    "effective": {
        "search": "int64",
        "kind": "str",
        "triple_rank": "int64",
        "dims": "str",
        "dropped_dim": "int64",
        "split": "str",
        "value": "float64",
        "drop": "float64",
        "effective": "boolean",
        "effective_dims": "str",
    },
}


def dims_str(dims: Any) -> str:
    """``(3, 17)`` -> ``"3,17"``; None -> ``"all"`` (the tables' ``dims`` column)."""
    return "all" if dims is None else ",".join(str(int(d)) for d in dims)


def typed_frame(kind: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols = _COLUMNS[kind]
    df = pd.DataFrame(rows).reindex(columns=list(cols))
    return df.astype({c: ("object" if t == "str" else t) for c, t in cols.items()})


def search_rows(search_id: int, found: SubsetSearch, k: int) -> list[dict[str, Any]]:
    rows = []
    for rank, (dims, v, t) in enumerate(
        zip(found.dims[:k], found.valid[:k], found.test[:k], strict=True), start=1
    ):
        for split, value in (("valid", v), ("test", t)):
            rows.append(
                {
                    "search": search_id,
                    "size": found.size,
                    "mode": "exhaustive" if found.exhaustive else "sampled",
                    "sample_size": found.n_evaluated,
                    "seed": found.seed,
                    "rank": rank,
                    "dims": dims_str(dims),
                    "split": split,
                    "value": float(value),
                }
            )
    return rows


def histogram_rows(
    search_id: int, found: SubsetSearch, split: str, counts: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {
            "search": search_id,
            "size": found.size,
            "mode": "exhaustive" if found.exhaustive else "sampled",
            "sample_size": found.n_evaluated,
            "split": split,
            "bin_left": float(low),
            "bin_right": float(high),
            "count": int(count),
        }
        for low, high, count in zip(found.edges[:-1], found.edges[1:], counts, strict=True)
    ]


def effective_rows(search_id: int, eff: EffectiveDimensions) -> list[dict[str, Any]]:
    rows = [
        {
            "search": search_id,
            "kind": "ablation",
            "triple_rank": int(r.triple_rank),
            "dims": dims_str(r.triple),
            "dropped_dim": int(r.removed),
            "split": "valid",
            "value": float(r.pair_valid),
            "drop": float(r.drop),
            "effective": bool(r.effective),
        }
        for r in eff.ablation.itertuples()
    ]
    for split, value in (("valid", eff.best_valid), ("test", eff.best_test)):
        rows.append(
            {
                "search": search_id,
                "kind": "best_effective_pair",
                "triple_rank": 0,
                "dims": dims_str(eff.best_pair),
                "dropped_dim": -1,
                "split": split,
                "value": float(value),
                "effective_dims": dims_str(eff.effective),
            }
        )
    return rows


def layers_frame(per_layer: pd.DataFrame | None) -> pd.DataFrame:
    if per_layer is None:
        return pd.DataFrame(
            {
                "layer": pd.Series(dtype="int64"),
                "n_pairs": pd.Series(dtype="int64"),
                "degenerate": pd.Series(dtype="bool"),
            }
        )
    df = per_layer.copy()
    df["best_dims"] = [None if d is None else dims_str(d) for d in df["best_dims"]]
    return df


def read_scan(results: str | os.PathLike, run: str) -> dict[str, pd.DataFrame]:
    """The frames of ``results/subsets/<run>/`` by file stem."""
    base = Path(results) / "subsets" / run
    return {Path(f).stem: pd.read_parquet(base / f) for f in SCAN_FILES}
