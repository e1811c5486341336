"""One fine-tuned run's S1 subset scan: every search S1's tables need, computed once per run.

The `subsets` rule runs :func:`scan_run` on ``results/embeddings/<run>/embeddings.safetensors``
and writes tidy Parquet files under ``results/subsets/<run>/`` (names and columns in
``scan_files``); the S1.T2, S1.TA1, S1.T3, S1.FA3 and S1.FL table builders only aggregate them.
What one scan computes, on the last layer's CLS vectors through the run's linear head:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneatlas.analysis.capture import EMBEDDINGS_FILE
from tuneatlas.analysis.subsets.combinatorics import n_combinations, paper_sample_size
from tuneatlas.analysis.subsets.effective import effective_dimensions, layer_redundancy
from tuneatlas.analysis.subsets.kernels import score_histogram
from tuneatlas.analysis.subsets.scan_files import (
    effective_rows,
    histogram_rows,
    layers_frame,
    search_rows,
    typed_frame,
)
from tuneatlas.analysis.subsets.scorer import Backend, SubsetScorer
from tuneatlas.analysis.subsets.search import SubsetSearch, search_subsets
from tuneatlas.data.tasks import get_task
from tuneatlas.engine.device import resolve_device
from tuneatlas.io import provenance, stable_hash, write_parquet

log = logging.getLogger(__name__)

#: The splits a scan scores: subsets are ranked on valid and looked up on test.
SCANNED_SPLITS: tuple[str, str] = ("valid", "test")

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


@dataclass
class _Head:
    """The run's linear head, labels and metric: what every scorer of one scan shares."""

    weight: np.ndarray
    bias: np.ndarray
    labels: dict[str, np.ndarray]
    metric: str
    regression: bool
    device: torch.device
    backend: Backend

    def scorer(self, split: str, hidden: Any) -> SubsetScorer:
        return SubsetScorer(
            hidden, self.labels[split], self.weight, self.bias, self.metric,
            regression=self.regression, device=self.device, backend=self.backend,
        )  # fmt: skip


@dataclass
class _Searches:
    """The scan's searches in order (the index is the tables' ``search`` id) and their rows."""

    k: int
    found: list[SubsetSearch] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    hist: list[dict[str, Any]] = field(default_factory=list)

    def record(self, found: SubsetSearch) -> int:
        self.found.append(found)
        sid = len(self.found) - 1
        self.top.extend(search_rows(sid, found, self.k))
        self.hist.extend(histogram_rows(sid, found, "valid", found.counts))
        return sid


def _summary_rows(task_name: str, head: _Head, scorers: Mapping[str, SubsetScorer]) -> list:
    return [
        {
            "split": split,
            "task": task_name,
            "metric": head.metric,
            "regression": head.regression,
            "n_examples": s.n_examples,
            "n_dims": s.n_dims,
            "n_classes": s.n_classes,
            "all_dims": s.score_all_dims(),
        }
        for split, s in scorers.items()
    ]


def _scan_pairs(
    searches: _Searches, valid: SubsetScorer, test: SubsetScorer, spec: Mapping[str, Any]
) -> None:
    """All pairs (+ the test histogram of all pairs, S1.FA3), then the paper-rate sample."""
    k, seed, bins = searches.k, int(spec["seed"]), int(spec["histogram_bins"])
    found = search_subsets(valid, 2, k=k, test=test, bins=bins)
    sid = searches.record(found)
    searches.hist.extend(
        histogram_rows(sid, found, "test", score_histogram(test.pair_scores(), found.edges))
    )
    n_pairs = max(paper_sample_size(valid.n_dims, 2, float(spec["pair_rate"])), 1)
    searches.record(
        search_subsets(valid, 2, k=k, test=test, n_samples=n_pairs, seed=seed, bins=bins)
    )


def _scan_triples(
    searches: _Searches, valid: SubsetScorer, test: SubsetScorer, spec: Mapping[str, Any],
    t0: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """All triples and/or the seeded samples, then S1.T3's ablation; returns its rows."""
    k, seed, bins, tri = searches.k, int(spec["seed"]), int(spec["histogram_bins"]), spec["triples"]
    total = n_combinations(valid.n_dims, 3)
    source = None
    if tri["exhaustive"]:
        source = searches.record(search_subsets(valid, 3, k=k, test=test, bins=bins))
        log.info("subsets: all %d triples done (%.1f s)", total, time.perf_counter() - t0)
    largest = None
    for n in tri["sample_sizes"]:
        n = max(min(int(n), total), 1)
        sid = searches.record(
            search_subsets(valid, 3, k=k, test=test, n_samples=n, seed=seed, bins=bins)
        )
        if largest is None or n > searches.found[largest].n_evaluated:
            largest = sid
    source = largest if source is None else source
    top_triples = searches.found[source].dims[: int(spec["effective_top"])]
    eff = effective_dimensions(
        valid,
        top_triples,
        test=test,
        rule=spec.get("effective_rule", "largest"),
        min_drop=float(spec.get("effective_min_drop", 0.05)),
    )
    return effective_rows(source, eff)


def _scan_layers(emb: LazyEmbeddings, head: _Head, spec: Mapping[str, Any]) -> pd.DataFrame:
    """S1.FL: the per-layer pair statistics, one layer read at a time."""
    return layer_redundancy(
        emb.layers("valid"),
        head.labels["valid"],
        head.weight,
        head.bias,
        head.metric,
        regression=head.regression,
        layers_test=emb.layers("test"),
        labels_test=head.labels["test"],
        n_pairs=spec["layers"]["pairs_per_layer"],
        seed=int(spec["seed"]),
        device=head.device,
        backend=head.backend,
    )


def _write_frames(
    frames: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike, spec: Mapping[str, Any],
    emb: LazyEmbeddings, device: torch.device, meta: Mapping[str, Any] | None,
) -> None:  # fmt: skip
    info = {
        "kind": "subsets",
        "spec": dict(spec),
        "spec_hash": stable_hash(dict(spec)),
        "embeddings": str(emb.path),
        "embeddings_git_commit": emb.metadata.get("git_commit", ""),
        "device": device.type,
        **(meta or {}),
    }
    config_hash = str(info.pop("config_hash", ""))
    for stem, df in frames.items():
        write_parquet(df, Path(out_dir) / f"{stem}.parquet", provenance(config_hash, **info))


def scan_run(
    embeddings: str | os.PathLike,
    spec: Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    backend: Backend = "auto",
    meta: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Scan one run's embeddings as ``spec`` says; write ``SCAN_FILES`` to ``out_dir`` if given.

    ``embeddings`` is the ``embeddings.safetensors`` file or its directory. ``device``: None or
    ``"auto"`` = CUDA when present, else CPU. Returns the frames by file stem.
    """
    spec = validate_spec(spec)
    dev = resolve_device(device)
    emb = LazyEmbeddings(embeddings)
    task = get_task(spec["task"])
    if task.metric is None:
        raise ValueError(f"task {task.name!r} has no metric to score subsets with")
    t0 = time.perf_counter()
    head = _Head(
        weight=emb.tensor("head.weight"),
        bias=emb.tensor("head.bias"),
        labels={split: emb.tensor(f"{split}.labels") for split in SCANNED_SPLITS},
        metric=task.metric,
        regression=task.is_regression,
        device=dev,
        backend=backend,
    )
    valid, test = (head.scorer(split, emb.layer(split, -1)) for split in SCANNED_SPLITS)
    summary = _summary_rows(task.name, head, {"valid": valid, "test": test})
    # T3 takes its top effective_top triples from the same scan as TA1's top_k
    tri = spec["triples"]
    k = max(int(spec["top_k"]), int(spec["effective_top"]) if tri is not None else 0)
    searches = _Searches(k)
    _scan_pairs(searches, valid, test, spec)
    log.info("subsets: pairs of %d dims done (%.1f s)", valid.n_dims, time.perf_counter() - t0)
    effective = [] if tri is None else _scan_triples(searches, valid, test, spec, t0)
    per_layer = None
    if spec["layers"] is not None:
        per_layer = _scan_layers(emb, head, spec)
        log.info("subsets: %d layers done (%.1f s)", len(per_layer), time.perf_counter() - t0)
    frames = {
        "summary": typed_frame("summary", summary),
        "top": typed_frame("top", searches.top),
        "histograms": typed_frame("histograms", searches.hist),
        "effective": typed_frame("effective", effective),
        "layers": layers_frame(per_layer),
    }
    if out_dir is not None:
        _write_frames(frames, out_dir, spec, emb, dev, meta)
    log.info("subsets: scan done in %.1f s on %s", time.perf_counter() - t0, dev)
    return frames
