"""Transforms of a dataset's rows: normalise raw rows into the on-disk schema (validating each
row), subsample to `max_rows`, re-split (S1) and imbalance (S3).

Every random choice is seeded by the config's seed and its purpose (`seeded_rng`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.data.tasks import SPLITS, Task
from tuneatlas.data.validate import dataset_key
from tuneatlas.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Normalisation: raw rows -> idx, text_a, text_b, label (or idx, text)


def _is_missing(v: Any) -> bool:
    """None, NaN, pd.NA or NaT: a missing cell in any of the readers' frames."""
    if v is None or isinstance(v, str):
        return v is None
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # list-like cells are not missing, just wrong
        return False


def _row_ref(pos: int, lines: np.ndarray | None) -> str:
    ref = f"row {pos + 1}"
    if lines is not None:
        ref += f" (line {int(lines[pos])})"
    return ref


def _fail(origin: str, mask: np.ndarray, lines: np.ndarray | None, what: str, fix: str) -> None:
    """Raise a DataError for the first row in `mask`, with the count of all such rows."""
    bad = np.flatnonzero(mask)
    if len(bad):
        more = f" ({len(bad)} rows in total)" if len(bad) > 1 else ""
        raise DataError(f"{origin}: {_row_ref(int(bad[0]), lines)}: {what}{more}; {fix}")


def _column(raw: pd.DataFrame, col: str, key: str, origin: str) -> pd.Series:
    if col not in raw.columns:
        raise DataError(
            f"{origin}: column {col!r} ({key}) not found; available columns:"
            f" {[str(c) for c in raw.columns]}. Set columns.{key} in the dataset config (or"
            f" {key} of a task declared under tasks:) to one of them"
        )
    return raw[col]


def text_column(
    raw: pd.DataFrame, cols: Sequence[str], key: str, origin: str, lines: np.ndarray | None
) -> pd.Series:
    parts = []
    for col in cols:
        s = _column(raw, col, key, origin)
        values = s.to_numpy(dtype=object)
        missing = np.array([_is_missing(v) for v in values], dtype=bool)
        _fail(
            origin,
            missing,
            lines,
            f"missing text in column {col!r} ({key})",
            "fill in or drop these rows",
        )
        nonstr = np.array([not isinstance(v, str) for v in values])
        _fail(
            origin,
            nonstr,
            lines,
            f"text in column {col!r} ({key}) is not a string",
            "store text columns as strings",
        )
        parts.append(pd.Series([v.strip() for v in values], dtype=str))
    text = parts[0]
    for p in parts[1:]:
        text = text.str.cat(p, sep="\n").str.strip()
    _fail(
        origin,
        (text == "").to_numpy(),
        lines,
        f"empty text in {'+'.join(cols)!r} ({key})",
        "fill in or drop these rows",
    )
    return text


def _labels(
    raw: pd.DataFrame, col: str, task: Task, origin: str, lines: np.ndarray | None
) -> np.ndarray:
    values = _column(raw, col, "label", origin).to_numpy(dtype=object)
    missing = np.array(
        [_is_missing(v) or (isinstance(v, str) and not v.strip()) for v in values], dtype=bool
    )
    _fail(origin, missing, lines, f"missing label in column {col!r}", "fill in or drop these rows")
    if task.is_regression:
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
                ok = not isinstance(v, bool) and np.isfinite(out[i])
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise DataError(
                    f"{origin}: {_row_ref(i, lines)}: label {v!r} in column {col!r} is not a"
                    f" finite number; task {task.name!r} is a regression task"
                )
        return out
    names = {n: i for i, n in enumerate(task.label_names)}
    out_i = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        parsed: int | None = None
        if isinstance(v, str):
            s = v.strip()
            if s in names:
                parsed = names[s]
            else:
                try:
                    f = float(s)
                    parsed = int(f) if f.is_integer() else None
                except ValueError:
                    parsed = None
        elif isinstance(v, int | np.integer) and not isinstance(v, bool):
            parsed = int(v)
        elif isinstance(v, float | np.floating) and float(v).is_integer():
            parsed = int(v)
        if parsed is None:
            known = f" or one of {list(task.label_names)}" if task.label_names else ""
            raise DataError(
                f"{origin}: {_row_ref(i, lines)}: label {v!r} in column {col!r} is not a class"
                f" id (an integer in [0, {task.num_labels})){known}"
            )
        if not 0 <= parsed < task.num_labels:
            hint = (
                " (-1 marks a hidden test label, as in GLUE's test splits: use train +"
                " validation with 'resplit' instead)"
                if parsed == -1
                else ""
            )
            raise DataError(
                f"{origin}: {_row_ref(i, lines)}: label {parsed} in column {col!r} is out of"
                f" range [0, {task.num_labels}) for task {task.name!r}{hint}"
            )
        out_i[i] = parsed
    return out_i


def columns_for(task: Task, cfg: Mapping[str, Any]) -> dict[str, list[str] | None]:
    given = dict(cfg.get("columns") or {})

    def names(v: Any) -> list[str] | None:
        return None if v is None else ([v] if isinstance(v, str) else list(v))

    if task.is_corpus:
        return {"text": names(given.get("text", task.text_a))}
    return {
        "text_a": names(given.get("text_a", list(task.text_a_columns))),
        "text_b": names(given.get("text_b", task.text_b)),
        "label": names(given.get("label", task.label)),
    }


def normalise(
    raw: pd.DataFrame,
    task: Task,
    columns: Mapping[str, list[str] | None],
    origin: str,
    lines: np.ndarray | None = None,
) -> pd.DataFrame:
    """Validate raw rows and return them in the on-disk schema; `idx` = 0-based source row."""
    raw = raw.reset_index(drop=True)
    idx = np.arange(len(raw), dtype=np.int64)

    def required(key: str) -> list[str]:
        cols = columns.get(key)
        if not cols:
            raise ConfigError(f"{origin}: no source column given for {key!r} (columns.{key})")
        return cols

    if task.is_corpus:
        text_cols = required("text")
        return pd.DataFrame(
            {"idx": idx, "text": text_column(raw, text_cols, "text", origin, lines)}
        )
    a_cols, label_cols = required("text_a"), required("label")
    b_cols = columns["text_b"]
    text_a = text_column(raw, a_cols, "text_a", origin, lines)
    text_b = (
        text_column(raw, b_cols, "text_b", origin, lines)
        if b_cols is not None
        else pd.Series([None] * len(raw), dtype=str)
    )
    label = _labels(raw, label_cols[0], task, origin, lines)
    return pd.DataFrame({"idx": idx, "text_a": text_a, "text_b": text_b, "label": label})


def row_problems(
    raw: pd.DataFrame,
    task: Task,
    columns: Mapping[str, list[str] | None],
    origin: str,
    lines: np.ndarray | None = None,
) -> list[str]:
    """Every problem `normalise` would raise on these rows, one per column key (text_a, text_b,
    label or text), so a validation run lists them all instead of stopping at the first."""
    raw = raw.reset_index(drop=True)
    keys = ("text",) if task.is_corpus else ("text_a", "text_b", "label")
    problems = []
    for key in keys:
        cols = columns.get(key)
        try:
            if not cols:
                if key != "text_b":
                    normalise(raw.iloc[:0], task, {**columns, key: None}, origin, lines)
            elif key == "label":
                _labels(raw, cols[0], task, origin, lines)
            else:
                text_column(raw, cols, key, origin, lines)
        except (DataError, ConfigError) as err:
            problems.append(str(err))
    return problems


# ---------------------------------------------------------------------------------------------
# Subsample, re-split, imbalance


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])


def subsample(df: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most `n` rows, drawn at random (sources are often sorted by label), in source order."""
    if len(df) <= n:
        return df
    keep = np.sort(rng.choice(len(df), size=n, replace=False))
    return df.iloc[keep].reset_index(drop=True)


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Split `n` rows by `ratios` (largest remainder): counts sum to `n` exactly."""
    total = float(sum(ratios))
    exact = [n * r / total for r in ratios]
    counts = [int(np.floor(e)) for e in exact]
    # ties go to the earlier split (train first), so 872 x [8,1,1] -> 698/87/87
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def resplit(
    frames: Mapping[str, pd.DataFrame], ratios: Sequence[float], seed: int
) -> dict[str, pd.DataFrame]:
    """Pool all splits (train, valid, test order), shuffle with `seed`, cut by `ratios`.

    `idx` stays unique: ids already unique across splits (synthetic) are kept; per-split row
    ids (files, hub) are offset past the ids of the splits pooled before them, so that they
    number the rows of the concatenated source.
    """
    parts = [frames[s] for s in SPLITS if s in frames]
    pool = pd.concat(parts, ignore_index=True)
    if pool["idx"].duplicated().any():
        # per-split row ids (files, hub): offset each split past the ids of the ones before it
        offset, shifted = 0, []
        for df in parts:
            shifted.append(df.assign(idx=df["idx"] + offset))
            offset += int(df["idx"].max()) + 1 if len(df) else 0
        pool = pd.concat(shifted, ignore_index=True)
    perm = seeded_rng(seed, "resplit").permutation(len(pool))
    pool = pool.iloc[perm].reset_index(drop=True)
    out, start = {}, 0
    for split, count in zip(SPLITS, split_counts(len(pool), ratios), strict=True):
        out[split] = pool.iloc[start : start + count].reset_index(drop=True)
        start += count
    return out


def imbalance(
    frames: dict[str, pd.DataFrame], task: Task, spec: Mapping[str, Any], seed: int, name: str
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """S3's imbalanced training set and balanced test set; returns (frames, class table).

    Classes are assigned to groups by `groups` ({class name: group index}) when given, else at
    random (seeded); group g's classes keep `group_sizes[g]` training rows each; the test split
    keeps `test_per_class` rows per class.
    """
    if "train" not in frames:
        raise DataError(f"{dataset_key(name, 'imbalance')}: needs a train split; none was loaded")
    per = int(spec["classes_per_group"])
    sizes = [int(s) for s in spec["group_sizes"]]
    test_per = spec.get("test_per_class")
    if test_per is not None and "test" not in frames:
        raise DataError(
            f"{dataset_key(name, 'imbalance')}.test_per_class needs a test split; add one to the"
            " source or use 'resplit'"
        )
    rng = seeded_rng(seed, "imbalance")
    order = rng.permutation(task.num_labels)
    group = np.empty(task.num_labels, dtype=np.int64)
    group[order] = np.arange(task.num_labels) // per
    if spec.get("groups"):  # the drawn permutation stays drawn: the row sample is the same RNG
        names = list(task.label_names) or [str(c) for c in range(task.num_labels)]
        group = np.asarray([int(spec["groups"][n]) for n in names], dtype=np.int64)

    def take(df: pd.DataFrame, counts: np.ndarray, split: str) -> pd.DataFrame:
        keep = []
        labels = df["label"].to_numpy()
        for c in range(task.num_labels):
            rows = np.flatnonzero(labels == c)
            if len(rows) < counts[c]:
                raise DataError(
                    f"{dataset_key(name, 'imbalance')}: split {split!r} has {len(rows)} rows of"
                    f" class {c}, {int(counts[c])} are needed; lower the sizes or add data"
                )
            keep.append(rng.choice(rows, size=int(counts[c]), replace=False))
        return df.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)

    n_train = np.asarray([sizes[g] for g in group], dtype=np.int64)
    out = dict(frames)
    out["train"] = take(frames["train"], n_train, "train")
    if test_per is not None:
        n_test = np.full(task.num_labels, int(test_per), dtype=np.int64)
        out["test"] = take(frames["test"], n_test, "test")
    test_counts = (
        np.bincount(out["test"]["label"], minlength=task.num_labels)
        if "test" in out
        else np.zeros(task.num_labels, dtype=np.int64)
    )
    classes = pd.DataFrame(
        {
            "class": np.arange(task.num_labels, dtype=np.int64),
            "name": pd.Series(
                list(task.label_names) or [str(c) for c in range(task.num_labels)], dtype=str
            ),
            "group": group,
            "n_train": n_train,
            "n_test": test_counts.astype(np.int64),
        }
    )
    return out, classes
