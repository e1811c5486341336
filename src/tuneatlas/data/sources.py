"""Readers of dataset sources: local files (TSV, CSV, JSONL, Parquet, text) and the hub.

`load_sources` gives the raw rows of each split of a `file` or `hub` source as they are (with
line numbers where the format has lines); `fetch_hub_dataset` is the only hub access that
writes: a hub source's splits, batch by batch, into a local copy that `prepare` reads.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tuneatlas.data.tasks import Task
from tuneatlas.data.validate import FORMATS, SPLIT_ALIASES, check_source, dataset_key, format_of
from tuneatlas.errors import ConfigError, DataError, HubOfflineError
from tuneatlas.io import META_PREFIX, atomic_dir, hub_offline, read_parquet_meta

log = logging.getLogger(__name__)

# The keys of a hub source that decide what is downloaded (`fetch_hub_dataset`); the rest
# (resplit, imbalance, columns, facts, max_rows of a non-streaming source) act on the copy.
HUB_FETCH_KEYS = ("source", "task", "path", "name", "revision", "splits", "data_files", "streaming")
HUB_BATCH_ROWS = 10_000  # rows per Arrow batch read from the hub and written to the copy
HUB_BATCH_ROWS = 10_000  # rows per Arrow batch read from the hub and written to the copy


# ---------------------------------------------------------------------------------------------
# Files


def _lines(text: str) -> list[str]:
    """Lines split at newlines only, without a trailing carriage return.

    str.splitlines also splits at U+0085, U+2028 and other separators that real corpora carry
    inside sentences, which would shift rows and line numbers.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def _text(path: Path) -> str:
    """A text file's content; a UTF-8 byte-order mark is dropped (every format accepts one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); re-save the file as UTF-8"
        ) from None


def unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a field given twice in one record."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate field(s) {dup} in one record; keep one")
    return dict(pairs)


def read_file(path: Path, fmt: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Raw rows of a file as a frame, and for line-based formats each row's line number.

    Refused, naming the file: an empty file, a file without data rows, duplicate columns (CSV
    readers rename one silently), text that is not UTF-8."""
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file; a split file needs rows (and a header for TSV/CSV)")
    raw, lines = _read_rows(path, fmt)
    header = list(raw.columns)
    if fmt == "csv":  # pandas renamed a repeated name (label, label.1): read the header itself
        first = _text(path).split("\n", 1)[0].removesuffix("\r")
        header = next(csv.reader([first]), [])
    dup = sorted({str(c) for c in header if header.count(c) > 1})
    if dup:
        raise DataError(
            f"{path}: line 1: duplicate column(s) {dup} in the header; rename or drop one"
        )
    if len(raw) == 0:
        raise DataError(
            f"{path}: no data rows (a header alone, or only blank lines); add rows or remove the"
            " file from the dataset's 'files'/'dir'"
        )
    return raw, lines


def _read_rows(path: Path, fmt: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"{path}: file not found; fix the path in the dataset's 'files'/'dir'")
    if fmt == "tsv":
        return _read_tsv(path)
    if fmt == "csv":
        _text(path)  # not UTF-8: say so, naming the file
        try:
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
            )
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: no header line; a CSV needs one") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot parse as CSV ({err})") from None
        return df, None  # quoted fields may span lines: report rows, not lines
    if fmt == "jsonl":
        text = _text(path)
        if text.lstrip().startswith("["):
            try:
                return pd.DataFrame(json.loads(text)), None
            except (ValueError, TypeError) as err:
                raise DataError(f"{path}: not a JSON array of records ({err})") from None
        records, lines = [], []
        for n, line in enumerate(_lines(text), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line, object_pairs_hook=unique_fields)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {n}: invalid JSON ({err.msg})") from None
            except ValueError as err:
                raise DataError(f"{path}: line {n}: {err}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object per line")
            records.append(rec)
            lines.append(n)
        return pd.DataFrame.from_records(records), np.asarray(lines)
    if fmt == "parquet":
        names = pq.read_schema(path).names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{path}: duplicate column(s) {dup}; rename or drop one")
        return pd.read_parquet(path), None
    if fmt == "txt":
        texts, lines = [], []
        for n, line in enumerate(_lines(_text(path)), start=1):
            if line.strip():  # blank lines separate records; they are not records
                texts.append(line)
                lines.append(n)
        return pd.DataFrame({"text": pd.Series(texts, dtype=str)}), np.asarray(lines)
    raise DataError(f"{path}: unsupported format {fmt!r}")


def _read_tsv(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A GLUE-style TSV: header line, one record per line, tab-separated, no quoting.

    Parsed by hand rather than with csv/pandas so that bare quotes inside sentences stay text
    (csv.QUOTE_NONE semantics), no word is mistaken for a missing value ("null", "NA"), and
    every row keeps its exact line number for error messages. Empty lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    lines = _lines(text)
    if not lines[0]:
        raise DataError(f"{path}: empty file; a TSV needs a header line")
    header = lines[0].split("\t")
    rows, numbers = [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}: line {n}: {len(fields)} tab-separated fields, the header has"
                f" {len(header)}; a tab inside a text field splits it (TSVs are read without"
                " quoting): remove stray tabs"
            )
        rows.append(fields)
        numbers.append(n)
    return pd.DataFrame(rows, columns=header, dtype=str), np.asarray(numbers, dtype=np.int64)


def dir_files(name: str, directory: Path) -> dict[str, str]:
    """Split -> path of the `<split>.<ext>` files in `directory` (train.tsv, dev.tsv, ...)."""
    if not directory.is_dir():
        raise DataError(f"{dataset_key(name, 'dir')}: {directory} is not a directory")
    found: dict[str, str] = {}
    for p in sorted(directory.iterdir()):
        stem, ext = p.stem.lower(), p.suffix.lower()
        if stem in SPLIT_ALIASES and ext in FORMATS:
            split = SPLIT_ALIASES[stem]
            if split in found:
                raise DataError(
                    f"{directory}: both {found[split]} and {p} are split {split!r}; keep one or"
                    " list the files under 'files'"
                )
            found[split] = str(p)
    if not found:
        raise DataError(
            f"{directory}: no <split>.<ext> files (split in {sorted(SPLIT_ALIASES)}, ext in"
            f" {sorted(FORMATS)}); found {sorted(p.name for p in directory.iterdir())}"
        )
    return found


# ---------------------------------------------------------------------------------------------
# The hub


def hub_fetch_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a hub source that decides what `fetch_hub_dataset` downloads: the params of
    the fetch rule, so that changing a transform (resplit, imbalance, max_rows of a downloaded
    split) prepares the local copy again without downloading it again."""
    spec = {k: cfg[k] for k in HUB_FETCH_KEYS if k in cfg}
    if cfg.get("streaming"):
        spec["max_rows"] = cfg.get("max_rows")  # a stream's budget decides what is read
    return spec


def _hub_batches(
    name: str, cfg: Mapping[str, Any], task: Task
) -> Iterator[tuple[str, str, Iterator[pa.Table]]]:
    """(our split, origin, Arrow batches of the hub split) per split of a hub source, in bounded
    memory; a stream stops at its row budget (`check_source` makes one required)."""
    path = cfg.get("path", task.hub_path)
    config_name = cfg.get("name", task.hub_name)
    var = hub_offline()
    if var:
        raise HubOfflineError(
            f"{dataset_key(name)}: the hub is unreachable in offline mode"
            f" ({var}={os.environ[var]}), so {path!r} (config {config_name!r}) cannot be loaded."
            " Point the dataset at local data instead: source: file with files:"
            " {train: /path/train.tsv, validation: /path/dev.tsv} (TSV/CSV/JSONL/Parquet) or"
            " dir: /path/to/dir holding <split>.<ext> files; or use source: synthetic for a toy"
            " run"
        )
    import datasets  # heavy import, only for real hub runs

    splits = dict(cfg.get("splits") or task.hub_split_map)
    streaming = bool(cfg.get("streaming", False))
    for split, hub_split in splits.items():
        origin = f"hub {path}" + (f"/{config_name}" if config_name else "") + f" [{hub_split}]"
        ds = datasets.load_dataset(
            path,
            config_name,
            split=hub_split,
            revision=cfg.get("revision"),
            data_files=cfg.get("data_files", task.hub_data_files),
            streaming=streaming,
        )
        if streaming:
            ds = ds.take(int(cfg["max_rows"]))
        yield SPLIT_ALIASES[split], origin, ds.with_format("arrow").iter(batch_size=HUB_BATCH_ROWS)


def _load_hub(
    name: str, cfg: Mapping[str, Any], task: Task, hub_copy: Path | None = None
) -> dict[str, tuple[pd.DataFrame, str]]:
    """Raw frames per split from the hub, or from a local copy `fetch_hub_dataset` wrote."""
    if hub_copy is not None:
        return _read_hub_copy(name, cfg, task, Path(hub_copy))
    out: dict[str, tuple[pd.DataFrame, str]] = {}
    for split, origin, batches in _hub_batches(name, cfg, task):
        tables = list(batches)
        if not tables:
            raise DataError(f"{origin}: the hub split has no rows ({dataset_key(name)})")
        out[split] = (pa.concat_tables(tables).to_pandas(), origin)
    return out


def fetch_hub_dataset(
    name: str, cfg: Mapping[str, Any], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Download the splits of hub source `name` into `out_dir/<split>.parquet`, as the hub has
    them (its columns, every row; a stream up to `max_rows`), batch by batch; {split: path}.

    The only step of a hub source that reaches the network: the workflow runs it on the submit
    host (compute nodes often have none), and `prepare_dataset(..., hub_copy=out_dir)` reads the
    copy anywhere. `out_dir` is written atomically; each file records its origin and the fetch
    spec (`hub_fetch_spec`), which the reader checks against its own source.
    """
    task = check_source(name, cfg)
    if cfg["source"] != "hub":
        raise ConfigError(
            f"{dataset_key(name, 'source')}: only a hub source is fetched, got {cfg['source']!r}"
        )
    spec = json.dumps(hub_fetch_spec(cfg), sort_keys=True, default=str)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    with atomic_dir(out_dir) as tmp:
        for split, origin, batches in _hub_batches(name, cfg, task):
            meta = {"dataset": name, "split": split, "origin": origin, "fetch": spec}
            if _write_batches(batches, tmp / f"{split}.parquet", meta) == 0:
                raise DataError(f"{origin}: the hub split has no rows ({dataset_key(name)})")
            written[split] = out_dir / f"{split}.parquet"
    log.info("fetched %s: %s", name, ", ".join(sorted(written)))
    return written


def _write_batches(batches: Iterator[pa.Table], path: Path, meta: Mapping[str, str]) -> int:
    """Stream Arrow batches into one Parquet file with `tuneatlas.*` metadata; rows written."""
    writer, schema, rows = None, None, 0
    try:
        for table in batches:
            if writer is None:
                extra = {(META_PREFIX + k).encode(): str(v).encode() for k, v in meta.items()}
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **extra})
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table.replace_schema_metadata(schema.metadata).cast(schema))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _read_hub_copy(
    name: str, cfg: Mapping[str, Any], task: Task, copy_dir: Path
) -> dict[str, tuple[pd.DataFrame, str]]:
    expected = json.dumps(hub_fetch_spec(cfg), sort_keys=True, default=str)
    out: dict[str, tuple[pd.DataFrame, str]] = {}
    for split in dict(cfg.get("splits") or task.hub_split_map):
        ours = SPLIT_ALIASES[split]
        path = copy_dir / f"{ours}.parquet"
        if not path.is_file():
            raise DataError(
                f"{path}: the hub copy of {dataset_key(name)} has no {ours!r} split; fetch it again"
                " (`tuneatlas fetch-hub`, the workflow's fetch_hub_data rule)"
            )
        meta = read_parquet_meta(path)
        if meta.get("fetch") != expected:
            raise DataError(
                f"{path}: fetched for hub source {meta.get('fetch')}, but {dataset_key(name)} is"
                f" now {expected}; fetch it again (`tuneatlas fetch-hub`, rule fetch_hub_data)"
            )
        out[ours] = (pd.read_parquet(path), meta.get("origin", str(path)))
    return out


def load_sources(
    name: str, cfg: Mapping[str, Any], task: Task, hub_copy: Path | None = None
) -> dict[str, tuple[pd.DataFrame, np.ndarray | None, str]]:
    """Raw frames per on-disk split name: (frame, line numbers or None, origin)."""
    if cfg["source"] == "file":
        files = dict(cfg["files"]) if "files" in cfg else dir_files(name, Path(cfg["dir"]))
        out = {}
        for split, p in files.items():
            path = Path(p).expanduser()
            raw, lines = read_file(path, format_of(path, cfg.get("format")))
            out[SPLIT_ALIASES[split]] = (raw, lines, str(path))
        return out
    hub = _load_hub(name, cfg, task, hub_copy)
    return {s: (raw, None, origin) for s, (raw, origin) in hub.items()}
