"""One fine-tuned run's S1 subset scan: every search S1's tables need, computed once per run.

The `subsets` rule runs :func:`scan_run` on ``results/embeddings/<run>/embeddings.safetensors``
and writes tidy Parquet files under ``results/subsets/<run>/`` (schemas in docs/internals.md,
"Files on disk"); the S1.T2, S1.TA1, S1.T3, S1.FA3 and S1.FL table builders only aggregate
them. What one scan computes, on the last layer's CLS vectors through the run's linear head:

* the all-dimension score on valid and test (``summary.parquet``);
* all pairs (exhaustive) and the paper-rate pair sample: the top-k on valid with their test
  scores (``top.parquet``), the valid histogram of each and the test histogram of all pairs
  (``histograms.parquet``);
* when asked (``triples``): all triples (``exhaustive``) and each configured seeded sample,
  top-k + valid histogram; then the effective-dimension ablation of S1.T3 on the top
  ``effective_top`` triples of the exhaustive scan, or of the largest sample without one
  (``effective.parquet``);
* when asked (``layers``): S1.FL's per-layer pair statistics (``layers.parquet``).

Embeddings are read lazily: single tensors, and single layers of ``<split>.cls`` through
``safe_open(...).get_slice``, so scans of the last layer never load the ``[L+1, N, H]`` tensor
and S1.FL holds one layer at a time.

The scan spec (the rule's params, built by the plan; see ``tuneatlas.plan``)::

    {"task": "sst2", "seed": 42, "top_k": 5, "effective_top": 10, "pair_rate": 0.05,
     "histogram_bins": 50,
     "triples": {"exhaustive": true, "sample_sizes": [75202, 7520, 752, 75]} | null,
     "layers": {"pairs_per_layer": null} | null}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tuneatlas.io import provenance, stable_hash, write_parquet

if TYPE_CHECKING:  # torch is imported by the scan itself: the workflow reads SCAN_FILES cheaply
    import torch

    from tuneatlas.analysis import subsets as ss

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.safetensors"
#: Files of one scan, always all written (a part that is off leaves an empty, typed table).
SCAN_FILES: tuple[str, ...] = (
    "summary.parquet",
    "top.parquet",
    "histograms.parquet",
    "effective.parquet",
    "layers.parquet",
)
SPLITS = ("valid", "test")

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


def _frame(kind: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols = _COLUMNS[kind]
    df = pd.DataFrame(rows).reindex(columns=list(cols))
    return df.astype({c: ("object" if t == "str" else t) for c, t in cols.items()})


# --------------------------------------------------------------------------- lazy embeddings


class LazyEmbeddings:
    """Reads single tensors, or single layers of ``<split>.cls``, from an embeddings file.

    ``reads`` records every read as ``(key, layer or None)``: what a scan touched.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            path = path / EMBEDDINGS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no embeddings file {path}")
        self.path = path
        self._open = lambda: safe_open(str(path), framework="numpy")
        with self._open() as f:
            self.keys = set(f.keys())
            self.metadata = dict(f.metadata() or {})
        self.reads: list[tuple[str, int | None]] = []

    def _need(self, key: str) -> None:
        if key not in self.keys:
            what = "a linear head" if key.startswith("head.") else f"the {key.split('.')[0]} split"
            raise ValueError(f"{self.path}: subset search needs {what} ({key!r} is missing)")

    def tensor(self, key: str) -> np.ndarray:
        self._need(key)
        self.reads.append((key, None))
        with self._open() as f:
            return f.get_tensor(key)

    def n_layers(self, split: str) -> int:
        key = f"{split}.cls"
        self._need(key)
        with self._open() as f:
            return int(f.get_slice(key).get_shape()[0])

    def layer(self, split: str, layer: int = -1) -> np.ndarray:
        """``<split>.cls[layer]`` ``[N, H]``, read without loading the other layers."""
        key = f"{split}.cls"
        n = self.n_layers(split)
        index = layer + n if layer < 0 else layer
        if not 0 <= index < n:
            raise IndexError(f"{key} has {n} layers, asked for {layer}")
        self.reads.append((key, index))
        with self._open() as f:
            return np.ascontiguousarray(f.get_slice(key)[index])

    def layers(self, split: str) -> _Layers:
        return _Layers(self, split)


class _Layers:
    """``[L+1, N, H]`` as a sequence that reads one layer per item (for ``layer_redundancy``)."""

    def __init__(self, emb: LazyEmbeddings, split: str) -> None:
        self.emb, self.split, self._n = emb, split, emb.n_layers(split)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.emb.layer(self.split, layer)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(self._n))


# --------------------------------------------------------------------------- the scan


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults and check a scan spec; returns a plain dict."""
    required = ("task", "seed", "top_k", "pair_rate", "histogram_bins")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"subset scan spec lacks {missing}")
    out = {"effective_top": spec.get("top_k"), "triples": None, "layers": None, **spec}
    if not 0 < float(out["pair_rate"]) <= 1:
        raise ValueError(f"pair_rate must be in (0, 1], got {out['pair_rate']}")
    if int(out["top_k"]) < 1 or int(out["effective_top"]) < 1:
        raise ValueError("top_k and effective_top must be >= 1")
    if out["triples"] is not None:
        tri = {"exhaustive": True, "sample_sizes": [], **out["triples"]}
        if not tri["exhaustive"] and not tri["sample_sizes"]:
            raise ValueError("triples: exhaustive is false and no sample_sizes are given")
        out["triples"] = tri
    if out["layers"] is not None:
        out["layers"] = {"pairs_per_layer": None, **out["layers"]}
    return out


def _search_rows(search_id: int, found: ss.SubsetSearch, k: int) -> list[dict[str, Any]]:
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


def _histogram_rows(
    search_id: int, found: ss.SubsetSearch, split: str, counts: np.ndarray
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


def _effective_rows(search_id: int, eff: ss.EffectiveDimensions) -> list[dict[str, Any]]:
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


def _layers_frame(per_layer: pd.DataFrame | None) -> pd.DataFrame:
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


def scan_run(
    embeddings: str | os.PathLike,
    spec: Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    backend: ss.Backend = "auto",
    meta: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Scan one run's embeddings as ``spec`` says; write ``SCAN_FILES`` to ``out_dir`` if given.

    ``embeddings`` is the ``embeddings.safetensors`` file or its directory. ``device``: None or
    ``"auto"`` = CUDA when present, else CPU. Returns the frames by file stem.
    """
    from tuneatlas.analysis import subsets as ss
    from tuneatlas.data.tasks import get_task
    from tuneatlas.engine.device import resolve_device

    spec = validate_spec(spec)
    dev = resolve_device(device)
    emb = LazyEmbeddings(embeddings)
    task = get_task(spec["task"])
    metric, regression = task.metric, task.is_regression
    if metric is None:
        raise ValueError(f"task {task.name!r} has no metric to score subsets with")
    seed, bins = int(spec["seed"]), int(spec["histogram_bins"])
    tri, lay = spec["triples"], spec["layers"]
    # T3 takes its top effective_top triples from the same scan as TA1's top_k
    k = max(int(spec["top_k"]), int(spec["effective_top"]) if tri is not None else 0)
    t0 = time.perf_counter()

    weight, bias = emb.tensor("head.weight"), emb.tensor("head.bias")
    labels = {split: emb.tensor(f"{split}.labels") for split in SPLITS}

    def scorer(split: str, hidden: np.ndarray) -> ss.SubsetScorer:
        return ss.SubsetScorer(
            hidden, labels[split], weight, bias, metric, regression=regression, device=dev,
            backend=backend,
        )  # fmt: skip

    valid, test = (scorer(split, emb.layer(split, -1)) for split in SPLITS)
    n_dims = valid.n_dims
    summary = [
        {
            "split": split,
            "task": task.name,
            "metric": metric,
            "regression": regression,
            "n_examples": s.n_examples,
            "n_dims": s.n_dims,
            "n_classes": s.n_classes,
            "all_dims": s.score_all_dims(),
        }
        for split, s in (("valid", valid), ("test", test))
    ]
    top: list[dict[str, Any]] = []
    hist: list[dict[str, Any]] = []
    searches: list[ss.SubsetSearch] = []

    def record(found: ss.SubsetSearch) -> int:
        searches.append(found)
        sid = len(searches) - 1
        top.extend(_search_rows(sid, found, k))
        hist.extend(_histogram_rows(sid, found, "valid", found.counts))
        return sid

    # pairs: exhaustive (+ the test histogram of all pairs, S1.FA3), then the paper-rate sample
    found = ss.search_subsets(valid, 2, k=k, test=test, bins=bins)
    sid = record(found)
    hist.extend(
        _histogram_rows(sid, found, "test", ss.score_histogram(test.pair_scores(), found.edges))
    )
    n_pairs = max(ss.paper_sample_size(n_dims, 2, float(spec["pair_rate"])), 1)
    record(ss.search_subsets(valid, 2, k=k, test=test, n_samples=n_pairs, seed=seed, bins=bins))
    log.info("subsets: pairs of %d dims done (%.1f s)", n_dims, time.perf_counter() - t0)

    effective: list[dict[str, Any]] = []
    if tri is not None:
        total = ss.n_combinations(n_dims, 3)
        source = None
        if tri["exhaustive"]:
            source = record(ss.search_subsets(valid, 3, k=k, test=test, bins=bins))
            log.info("subsets: all %d triples done (%.1f s)", total, time.perf_counter() - t0)
        largest = None
        for n in tri["sample_sizes"]:
            n = max(min(int(n), total), 1)
            sid = record(
                ss.search_subsets(valid, 3, k=k, test=test, n_samples=n, seed=seed, bins=bins)
            )
            if largest is None or n > searches[largest].n_evaluated:
                largest = sid
        source = largest if source is None else source
        top_triples = searches[source].dims[: int(spec["effective_top"])]
        eff = ss.effective_dimensions(valid, top_triples, test=test)
        effective = _effective_rows(source, eff)

    per_layer = None
    if lay is not None:
        per_layer = ss.layer_redundancy(
            emb.layers("valid"),
            labels["valid"],
            weight,
            bias,
            metric,
            regression=regression,
            layers_test=emb.layers("test"),
            labels_test=labels["test"],
            n_pairs=lay["pairs_per_layer"],
            seed=seed,
            device=dev,
            backend=backend,
        )
        log.info("subsets: %d layers done (%.1f s)", len(per_layer), time.perf_counter() - t0)

    frames = {
        "summary": _frame("summary", summary),
        "top": _frame("top", top),
        "histograms": _frame("histograms", hist),
        "effective": _frame("effective", effective),
        "layers": _layers_frame(per_layer),
    }
    if out_dir is not None:
        info = {
            "kind": "subsets",
            "spec": dict(spec),
            "spec_hash": stable_hash(dict(spec)),
            "embeddings": str(emb.path),
            "embeddings_git_commit": emb.metadata.get("git_commit", ""),
            "device": dev.type,
            **(meta or {}),
        }
        config_hash = str(info.pop("config_hash", ""))
        for stem, df in frames.items():
            write_parquet(df, Path(out_dir) / f"{stem}.parquet", provenance(config_hash, **info))
    log.info("subsets: scan done in %.1f s on %s", time.perf_counter() - t0, dev)
    return frames


def read_scan(results: str | os.PathLike, run: str) -> dict[str, pd.DataFrame]:
    """The frames of ``results/subsets/<run>/`` by file stem."""
    base = Path(results) / "subsets" / run
    return {Path(f).stem: pd.read_parquet(base / f) for f in SCAN_FILES}
