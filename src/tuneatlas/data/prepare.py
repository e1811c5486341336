"""Dataset preparation: load a task's data (synthetic, local file, or hub), validate it, optionally
re-split or imbalance it, and write `results/data/<dataset>/<split>.parquet` atomically.

A dataset source is a small dict from the config (see `tuneatlas.data.validate.SOURCE_KEYS`):

    {source: synthetic, task: sst2, sizes: {train: 800, validation: 200}}
    {source: file, task: sst2, files: {validation: /path/dev.tsv}, columns: {text_a: text}}
    {source: hub, task: sst2, path: nyu-mll/glue, name: sst2}

with the optional transforms `max_rows` (per source split), `resplit: [8, 1, 1]` (S1) and
`imbalance` (S3). On disk every labelled split has `idx` (int64), `text_a` (str), `text_b`
(str or null) and `label` (int64, or float64 for regression); corpora have `idx, text`.
Bad data fails with a `DataError` naming the file, the row and what to do. The checks live in
`validate`, the readers in `sources`, the transforms in `transform`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.data import synthetic
from tuneatlas.data.sources import dir_files, load_sources, read_file
from tuneatlas.data.tasks import SPLITS
from tuneatlas.data.transform import (
    columns_for,
    imbalance,
    normalise,
    resplit,
    seeded_rng,
    subsample,
    text_column,
)
from tuneatlas.data.validate import (
    DEFAULT_CORPUS_SIZES,
    DEFAULT_SIZES,
    SPLIT_ALIASES,
    check_source,
    dataset_key,
    format_of,
)
from tuneatlas.errors import ConfigError, DataError
from tuneatlas.io import write_parquet

FACT_COLUMNS = ("idx", "subject", "relation", "question", "answer")


def output_files(name: str, cfg: Mapping[str, Any]) -> list[str]:
    """File names `prepare_dataset` writes for this config (for declaring rule outputs)."""
    task = check_source(name, cfg)
    if task.is_corpus:
        return ["train.parquet"] + (["facts.parquet"] if task.synthetic == "facts" else [])
    if "resplit" in cfg:
        splits = list(SPLITS)
    elif cfg["source"] == "synthetic":
        splits = [SPLIT_ALIASES[s] for s in cfg.get("sizes", DEFAULT_SIZES)]
    elif cfg["source"] == "file":
        files = cfg["files"] if "files" in cfg else dir_files(name, Path(cfg["dir"]))
        splits = [SPLIT_ALIASES[s] for s in files]
    else:
        splits = [SPLIT_ALIASES[s] for s in (cfg.get("splits") or task.hub_split_map)]
    files_out = [f"{s}.parquet" for s in SPLITS if s in splits]
    return files_out + (["classes.parquet"] if "imbalance" in cfg else [])


def local_source_files(name: str, cfg: Mapping[str, Any]) -> dict[str, Path]:
    """The local files `prepare_dataset` reads for this config, keyed by where the config names
    them (``files.train``, ``dir/train``, ``facts``); the workflow declares them as inputs, so an
    edited file re-prepares the dataset. Existence is not checked here (a missing `dir` is)."""
    out: dict[str, Path] = {}
    if cfg.get("source") == "file":
        if "files" in cfg:
            out.update({f"files.{s}": Path(p).expanduser() for s, p in cfg["files"].items()})
        elif "dir" in cfg:
            found = dir_files(name, Path(cfg["dir"]).expanduser())
            out.update({f"dir/{s}": Path(p) for s, p in found.items()})
    if cfg.get("facts") and cfg.get("source") != "synthetic":
        out["facts"] = Path(cfg["facts"]).expanduser()
    return out


def load_raw_splits(
    name: str, cfg: Mapping[str, Any], seed: int, hub_copy: str | os.PathLike | None = None
) -> dict[str, pd.DataFrame]:
    """Load, validate and transform a dataset; {split: frame} (+ "facts"/"classes" tables).

    A hub source is read from `hub_copy` (a directory `fetch_hub_dataset` wrote) when given,
    from the hub otherwise."""
    task = check_source(name, cfg)
    if hub_copy is not None and cfg["source"] != "hub":
        raise ConfigError(
            f"{dataset_key(name)}: a hub copy was given for a {cfg['source']!r} source"
        )
    max_rows = cfg.get("max_rows")
    frames: dict[str, pd.DataFrame] = {}
    if cfg["source"] == "synthetic":
        sizes = dict(cfg.get("sizes", DEFAULT_CORPUS_SIZES if task.is_corpus else DEFAULT_SIZES))
        if max_rows:
            sizes = {s: min(n, int(max_rows)) for s, n in sizes.items()}
        if task.is_corpus:
            options = {k: cfg[k] for k in synthetic.CORPUS_OPTIONS if k in cfg}
            frames = synthetic.corpus(task.name, sizes["train"], seed, **options)
        else:
            for split, df in synthetic.generate_splits(task.name, sizes, seed).items():
                frames[SPLIT_ALIASES[split]] = df
    else:
        columns = columns_for(task, cfg)
        copy = Path(hub_copy) if hub_copy is not None else None
        for split, (raw, lines, origin) in load_sources(name, cfg, task, copy).items():
            df = normalise(raw, task, columns, origin, lines)
            if max_rows:
                df = subsample(df, int(max_rows), seeded_rng(seed, f"max_rows/{split}"))
            frames[split] = df
        if task.synthetic == "facts":
            frames["facts"] = _load_facts(name, cfg)
    if "resplit" in cfg:
        frames = resplit(frames, cfg["resplit"], seed)
    if "imbalance" in cfg:
        frames, frames["classes"] = imbalance(frames, task, cfg["imbalance"], seed, name)
    for split in SPLITS:
        if split in frames and len(frames[split]) == 0:
            raise DataError(
                f"{dataset_key(name)}: split {split!r} is empty after loading and re-splitting;"
                " add rows, raise max_rows or change the resplit ratios"
            )
    return frames


def _load_facts(name: str, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Facts for the knowledge probe from `facts:` (a file), or an empty table if none given."""
    if "facts" not in cfg:
        # Real corpora carry no fact list; the zsRE probe then uses its own evaluation data.
        return pd.DataFrame(
            {c: pd.Series([], dtype=np.int64 if c == "idx" else str) for c in FACT_COLUMNS}
        )
    path = Path(cfg["facts"]).expanduser()
    raw, lines = read_file(path, format_of(path, None))
    cols = FACT_COLUMNS[1:]
    out = {"idx": np.arange(len(raw), dtype=np.int64)}
    for col in cols:
        out[col] = text_column(raw, [col], col, str(path), lines)
    return pd.DataFrame(out)


def prepare_dataset(
    name: str,
    cfg: dict,
    out_dir: Path,
    seed: int,
    meta: dict | None = None,
    hub_copy: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Prepare dataset `name` from its source config into `out_dir`; {split or table: path}.

    Every file is written atomically with the dataset name, task, split, seed and source config
    in its metadata, plus `meta` (the caller's provenance: config hash and the like). A hub
    source reads the local copy `hub_copy` (see `fetch_hub_dataset`) when one is given.
    """
    task = check_source(name, cfg)
    frames = load_raw_splits(name, cfg, seed, hub_copy=hub_copy)
    out_dir = Path(out_dir)
    base = {
        "dataset": name,
        "task": task.name,
        "seed": str(seed),
        "source": json.dumps(cfg, sort_keys=True, default=str),
    }
    if "classes" in frames:
        base["imbalance"] = json.dumps(
            {
                int(c): int(g)
                for c, g in zip(frames["classes"]["class"], frames["classes"]["group"], strict=True)
            }
        )
    written: dict[str, Path] = {}
    for key, df in frames.items():
        extra = {"split": key, "rows": str(len(df))}
        written[key] = write_parquet(
            df, out_dir / f"{key}.parquet", {**base, **extra, **(meta or {})}
        )
    return written


def read_prepared(path: str | os.PathLike) -> pd.DataFrame:
    """A prepared split (or corpus) from disk, checked against the on-disk schema."""
    df = pd.read_parquet(path)
    for cols in (("idx", "text_a", "text_b", "label"), ("idx", "text")):
        if all(c in df.columns for c in cols):
            return df
    raise DataError(
        f"{path}: not a prepared split: columns {list(df.columns)}, expected idx, text_a,"
        " text_b, label (or idx, text for a corpus); re-run the prepare step"
    )


def source_sizes(name: str, cfg: Mapping[str, Any]) -> dict[str, int] | None:
    """Rows per source split before any transform, when the config alone fixes them: synthetic
    `sizes`, or the row counts of existing local files; None for hub data (or missing files,
    which the file checks report)."""
    if cfg.get("source") == "synthetic":
        return {s: int(n) for s, n in (cfg.get("sizes") or DEFAULT_SIZES).items()}
    files = local_source_files(name, cfg)
    paths = {k.split("/", 1)[-1].split(".", 1)[-1]: p for k, p in files.items() if k != "facts"}
    if not paths or not all(p.is_file() for p in paths.values()):
        return None
    return {s: len(read_file(p, format_of(p, cfg.get("format")))[0]) for s, p in paths.items()}


def corpus_texts(data_root: Path, datasets: Sequence[str]) -> list[str]:
    """Every text of the prepared `datasets` under `data_root` (all splits; text_a, text_b and
    corpus text columns): the corpus a toy tokenizer and BERT are built from."""
    texts: list[str] = []
    for name in datasets:
        for path in sorted((data_root / name).glob("*.parquet")):
            df = pd.read_parquet(path)
            for column in ("text_a", "text_b", "text"):
                if column in df:
                    texts.extend(df[column].dropna().astype(str).tolist())
    return texts
