"""The dataset vocabulary and the one home of dataset source checks.

What a `datasets.<name>` entry of the config may say (`SOURCE_KEYS`, split names, file formats,
default sizes, the streaming budget) and `check_source`, which checks one entry before any data
is read and names the offending key. The imbalance arithmetic (groups x classes, the rows a
set-up needs against the rows a source has) is checked here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneatlas.data.tasks import SCRIPT_DATASETS, Task, get_task
from tuneatlas.errors import ConfigError, DataError

# Source split names -> on-disk split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "validation": "valid",
    "valid": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
}

COMMON_KEYS = frozenset({"source", "task", "max_rows", "resplit", "imbalance"})
SOURCE_KEYS: dict[str, frozenset[str]] = {
    "synthetic": COMMON_KEYS | {"sizes", "n_facts", "qa_wording", "end_with_fact"},
    "file": COMMON_KEYS | {"files", "dir", "columns", "format", "facts", "train_tokens"},
    "hub": COMMON_KEYS
    | {"path", "name", "splits", "revision", "data_files", "streaming", "columns", "facts"}
    | {"train_tokens"},
}
FORMATS: dict[str, str] = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}

# Synthetic sizes when the config gives none: big enough to learn, small enough for a laptop.
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "validation": 500, "test": 500}
DEFAULT_CORPUS_SIZES: dict[str, int] = {"train": 2000}

# A stream (FineWeb-Edu: billions of tokens) is read only up to its row budget, never whole.
STREAMING_BUDGET = (
    "{key} is required with streaming: true: the number of rows read from the stream"
    " (a stream is never read whole), e.g. max_rows: 1000000"
)


# ---------------------------------------------------------------------------------------------
# Config checks: fail before any data is read, naming the key.


def dataset_key(name: str, key: str = "") -> str:
    return f"datasets.{name}" + (f".{key}" if key else "")


def check_source(name: str, cfg: Mapping[str, Any]) -> Task:
    """Check one dataset source config; return its task. Raises ConfigError naming the key."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{dataset_key(name)} must be a mapping, got {type(cfg).__name__}")
    source = cfg.get("source")
    if source not in SOURCE_KEYS:
        raise ConfigError(
            f"{dataset_key(name, 'source')} must be one of {sorted(SOURCE_KEYS)}, got {source!r}"
        )
    unknown = sorted(set(cfg) - SOURCE_KEYS[source])
    if unknown:
        raise ConfigError(
            f"{dataset_key(name)}: unknown key(s) {unknown} for source {source!r};"
            f" allowed: {sorted(SOURCE_KEYS[source])}"
        )
    try:
        task = get_task(cfg.get("task", name))
    except ValueError as err:
        raise ConfigError(f"{dataset_key(name, 'task')}: {err}") from None
    if not task.synthetic and source == "synthetic":  # a task declared under `tasks:`
        raise ConfigError(
            f"{dataset_key(name, 'source')}: task {task.name!r} is declared in the config and"
            " has no synthetic generator; use source: file with your data files"
        )
    if not task.synthetic and source == "hub" and not cfg.get("path"):
        raise ConfigError(
            f"{dataset_key(name, 'path')}: task {task.name!r} is declared in the config; a hub"
            " source needs the dataset's hub path"
        )
    max_rows = cfg.get("max_rows")
    if max_rows is not None and (not _is_int(max_rows) or max_rows < 1):
        raise ConfigError(
            f"{dataset_key(name, 'max_rows')} must be an integer >= 1, got {max_rows!r}"
        )
    if "resplit" in cfg:
        _check_resplit(name, cfg["resplit"])
    if "imbalance" in cfg:
        _check_imbalance(name, cfg["imbalance"], task)
    if task.is_corpus and ("resplit" in cfg or "imbalance" in cfg):
        raise ConfigError(
            f"{dataset_key(name)}: corpus {task.name!r} has a single train split;"
            " remove 'resplit'/'imbalance'"
        )
    _check_source_keys(name, cfg, task)
    if "columns" in cfg:
        _check_columns(name, cfg["columns"], task)
    if task.is_corpus and "files" in cfg and set(cfg["files"]) != {"train"}:
        raise ConfigError(
            f"{dataset_key(name, 'files')}: a corpus has only 'train', got {sorted(cfg['files'])}"
        )
    if "facts" in cfg and task.synthetic != "facts":
        raise ConfigError(f"{dataset_key(name, 'facts')} is only for the pre-training corpus")
    for key in ("n_facts", "qa_wording", "end_with_fact"):
        if key in cfg and task.synthetic != "facts":
            raise ConfigError(
                f"{dataset_key(name, key)} shapes the synthetic pre-training corpus only"
                " (task: pretrain); remove it"
            )
    return task


def _check_source_keys(name: str, cfg: Mapping[str, Any], task: Task) -> None:
    """The keys particular to the entry's source: synthetic sizes, a file source's files or
    directory and format, a hub source's splits, streaming budget and loading path."""
    source = cfg["source"]
    if source == "synthetic":
        sizes = cfg.get("sizes", DEFAULT_CORPUS_SIZES if task.is_corpus else DEFAULT_SIZES)
        _check_split_map(name, "sizes", sizes, int)
        if task.is_corpus and set(sizes) != {"train"}:
            raise ConfigError(
                f"{dataset_key(name, 'sizes')}: a corpus has only 'train', got {sorted(sizes)}"
            )
    elif source == "file":
        if ("files" in cfg) == ("dir" in cfg):
            raise ConfigError(
                f"{dataset_key(name)}: give exactly one of 'files' (split -> path) or 'dir'"
                " (a directory of <split>.<ext> files)"
            )
        if "files" in cfg:
            _check_split_map(name, "files", cfg["files"], str)
        if "format" in cfg and cfg["format"] not in set(FORMATS.values()):
            raise ConfigError(
                f"{dataset_key(name, 'format')} must be one of {sorted(set(FORMATS.values()))},"
                f" got {cfg['format']!r}"
            )
    else:
        if "splits" in cfg:
            _check_split_map(name, "splits", cfg["splits"], str)
        if "streaming" in cfg and not isinstance(cfg["streaming"], bool):
            raise ConfigError(f"{dataset_key(name, 'streaming')} must be true or false")
        if cfg.get("streaming") and cfg.get("max_rows") is None:
            raise ConfigError(STREAMING_BUDGET.format(key=dataset_key(name, "max_rows")))
        hub_path = cfg.get("path") or task.hub_path
        if hub_path in SCRIPT_DATASETS:
            raise ConfigError(
                f"{dataset_key(name, 'path')}: {hub_path!r} is a loading-script dataset, which"
                f" datasets >= 4 refuses to load; {SCRIPT_DATASETS[hub_path]}"
            )


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _check_split_map(name: str, key: str, value: Any, kind: type) -> None:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{dataset_key(name, key)} must be a non-empty mapping split -> {kind.__name__}"
        )
    targets: dict[str, str] = {}
    for split, v in value.items():
        if split not in SPLIT_ALIASES:
            raise ConfigError(
                f"{dataset_key(name, key)}: unknown split {split!r};"
                f" use one of {sorted(SPLIT_ALIASES)}"
            )
        if kind is int and (not _is_int(v) or v < 0):
            raise ConfigError(
                f"{dataset_key(name, key)}.{split} must be an integer >= 0, got {v!r}"
            )
        if kind is str and not isinstance(v, str | os.PathLike):
            raise ConfigError(f"{dataset_key(name, key)}.{split} must be a string, got {v!r}")
        target = SPLIT_ALIASES[split]
        if target in targets:
            raise ConfigError(
                f"{dataset_key(name, key)}: {targets[target]!r} and {split!r} both map to split"
                f" {target!r}; keep one"
            )
        targets[target] = split


def _check_resplit(name: str, ratios: Any) -> None:
    ok = (
        isinstance(ratios, Sequence)
        and not isinstance(ratios, str)
        and len(ratios) == 3
        and all(isinstance(r, int | float) and not isinstance(r, bool) and r >= 0 for r in ratios)
        and sum(ratios) > 0
    )
    if not ok:
        raise ConfigError(
            f"{dataset_key(name, 'resplit')} must be three numbers >= 0 (train, valid, test ratios)"
            f" with a positive sum, e.g. [8, 1, 1]; got {ratios!r}"
        )


def _check_imbalance(name: str, imb: Any, task: Task) -> None:
    where = dataset_key(name, "imbalance")
    if not isinstance(imb, Mapping):
        raise ConfigError(f"{where} must be a mapping with group_sizes, classes_per_group")
    unknown = sorted(set(imb) - {"group_sizes", "classes_per_group", "test_per_class", "groups"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: classes_per_group, group_sizes,"
            " groups, test_per_class"
        )
    sizes = imb.get("group_sizes")
    if (
        not isinstance(sizes, Sequence)
        or not sizes
        or not all(_is_int(s) and s >= 1 for s in sizes)
    ):
        raise ConfigError(f"{where}.group_sizes must be a list of integers >= 1, got {sizes!r}")
    per = imb.get("classes_per_group")
    if not _is_int(per) or per < 1:
        raise ConfigError(f"{where}.classes_per_group must be an integer >= 1, got {per!r}")
    test = imb.get("test_per_class")
    if test is not None and (not _is_int(test) or test < 1):
        raise ConfigError(f"{where}.test_per_class must be an integer >= 1, got {test!r}")
    if task.kind != "classification":
        raise ConfigError(f"{where}: task {task.name!r} is not a classification task")
    if len(sizes) * per != task.num_labels:
        raise ConfigError(
            f"{where}: {len(sizes)} groups x {per} classes = {len(sizes) * per}, but task"
            f" {task.name!r} has {task.num_labels} classes; every class needs one group"
        )
    if imb.get("groups") is not None:
        _check_group_map(where, imb["groups"], len(sizes), per, task)


def _check_group_map(where: str, groups: Any, n_groups: int, per: int, task: Task) -> None:
    """An explicit {class name: group index} map names every class once, each group `per`
    times."""
    names = list(task.label_names) or [str(c) for c in range(task.num_labels)]
    if not isinstance(groups, Mapping):
        raise ConfigError(f"{where}.groups must map class names to group indices, got {groups!r}")
    unknown = sorted(str(k) for k in groups if str(k) not in names)
    missing = [n for n in names if n not in {str(k) for k in groups}]
    if unknown or missing:
        raise ConfigError(
            f"{where}.groups: unknown class(es) {unknown}, missing {missing}; name every class"
            f" of task {task.name!r} once: {', '.join(names)}"
        )
    bad = {k: v for k, v in groups.items() if not _is_int(v) or not 0 <= v < n_groups}
    if bad:
        raise ConfigError(
            f"{where}.groups: group indices must be 0..{n_groups - 1} (positions in"
            f" group_sizes), got {bad}"
        )
    counts = [list(groups.values()).count(g) for g in range(n_groups)]
    if any(c != per for c in counts):
        raise ConfigError(
            f"{where}.groups: classes per group {counts}, but classes_per_group is {per};"
            " give each group that many classes"
        )


def _check_columns(name: str, columns: Any, task: Task) -> None:
    where = dataset_key(name, "columns")
    allowed = {"text"} if task.is_corpus else {"text_a", "text_b", "label"}
    if not isinstance(columns, Mapping):
        raise ConfigError(f"{where} must be a mapping, e.g. {{text_a: sentence, label: label}}")
    unknown = sorted(set(columns) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key, col in columns.items():
        if key == "text_b" and col is not None and not task.is_pair:
            raise ConfigError(
                f"{where}.text_b: task {task.name!r} is single-sentence; remove text_b"
            )
        if key == "text_b" and col is None and task.is_pair:
            raise ConfigError(f"{where}.text_b: task {task.name!r} is a sentence-pair task")
        names = [col] if isinstance(col, str) else col
        if col is not None and (
            not isinstance(names, Sequence)
            or not names
            or not all(isinstance(c, str) for c in names)
        ):
            raise ConfigError(
                f"{where}.{key} must be a column name or a list of names, got {col!r}"
            )
        if key == "label" and not isinstance(col, str):
            raise ConfigError(f"{where}.label must be one column name, got {col!r}")


def imbalance_size_problems(name: str, ds: Mapping[str, Any], task: Task) -> list[str]:
    """What a synthetic source's `sizes` cannot give its `imbalance`: the training rows the
    groups need, the test rows `test_per_class` needs (one line each, naming the key)."""
    imb, sizes, problems = ds["imbalance"], ds.get("sizes", {}), []
    need = imbalanced_train_rows(imb)
    if "train" in sizes and need > sizes["train"]:
        problems.append(
            f"the imbalanced training set needs {need} rows (sum of group_sizes x"
            f" classes_per_group), the source has {sizes['train']}"
            f" (datasets.{name}.imbalance.group_sizes): lower group_sizes or raise sizes.train"
        )
    per = imb.get("test_per_class")
    if per is not None and "test" in sizes and per * task.num_labels > sizes["test"]:
        problems.append(
            f"test_per_class {per} x {task.num_labels} classes = {per * task.num_labels} test"
            f" rows, the source has {sizes['test']} (datasets.{name}.imbalance.test_per_class):"
            f" use at most {sizes['test'] // task.num_labels}"
        )
    return problems


def imbalanced_train_rows(imb: Mapping[str, Any]) -> int:
    """Training rows of an imbalanced set: every class of group g keeps group_sizes[g] rows."""
    return sum(imb["group_sizes"]) * imb["classes_per_group"]


def format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r};"
            f" use one of {sorted(FORMATS)} or set 'format'"
        ) from None
