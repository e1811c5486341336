"""Tokenised training data, padded per batch: labelled splits for fine-tuning (`Split`: the
prepared `idx, text_a, text_b, label` Parquet files, checked, tokenised once, unpadded) and
unlabelled sentences for SimCSE and the toy BERT's masked-LM pre-training (`Sentences`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneatlas.data.tasks import SPLITS, Task


@dataclass
class Split:
    """One tokenised split, unpadded; `batch(rows)` pads dynamically to the longest row."""

    name: str
    idx: np.ndarray  # int64 row ids from the parquet `idx` column
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor  # int64 (classification) or float32 (regression)
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int], device: torch.device | str | None = None) -> dict:
        rows = [int(r) for r in rows]
        width = max(len(self.input_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(self.input_ids[r])
            ids[i, :n] = torch.tensor(self.input_ids[r], dtype=torch.long)
            mask[i, :n] = 1
            if self.token_type_ids is not None:
                types[i, :n] = torch.tensor(self.token_type_ids[r], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[rows]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = types
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

    def iter_batches(
        self,
        batch_size: int,
        rows: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> Iterator[dict]:
        """Batches over `rows` (default: all rows in file order)."""
        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        for i in range(0, len(rows), batch_size):
            yield self.batch(rows[i : i + batch_size], device)

    def subset(self, rows: Sequence[int]) -> Split:
        rows = [int(r) for r in rows]
        return Split(
            name=self.name,
            idx=self.idx[rows],
            input_ids=[self.input_ids[r] for r in rows],
            token_type_ids=None
            if self.token_type_ids is None
            else [self.token_type_ids[r] for r in rows],
            labels=self.labels[rows],
            pad_id=self.pad_id,
        )


def read_labelled_split(path: Path, task: Task) -> pd.DataFrame:
    """Read one prepared split and check what fine-tuning relies on (columns, labels)."""
    df = pd.read_parquet(path)
    missing = {"idx", "text_a", "text_b", "label"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing columns {sorted(missing)}; prepared splits have idx, text_a, "
            "text_b, label (run the prepare step again)"
        )
    if len(df) == 0:
        raise ValueError(f"{path}: the split is empty")
    bad_text = df["text_a"].isna() | (df["text_a"].astype(str).str.len() == 0)
    if bad_text.any():
        raise ValueError(f"{path}: empty text_a at row {int(np.flatnonzero(bad_text)[0])}")
    has_b = df["text_b"].notna()
    if has_b.any() and not has_b.all():
        raise ValueError(
            f"{path}: text_b is null at row {int(np.flatnonzero(~has_b)[0])} but set elsewhere; "
            "a task is either single-sentence (all null) or pairs (none null)"
        )
    if df["label"].isna().any():
        raise ValueError(
            f"{path}: missing label at row {int(np.flatnonzero(df['label'].isna())[0])}"
        )
    if not task.is_regression:
        labels = df["label"].to_numpy()
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{path}: task {task.name} needs integer class labels")
        bad = (labels < 0) | (labels >= task.num_labels)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: label {labels[r]} at row {r} is outside 0..{task.num_labels - 1} "
                f"for task {task.name}"
            )
    return df


def tokenize_split(
    df: pd.DataFrame, name: str, tokenizer: Any, max_length: int, regression: bool
) -> Split:
    text_a = df["text_a"].astype(str).tolist()
    text_b = df["text_b"].astype(str).tolist() if df["text_b"].notna().all() else None
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids")
    labels = (
        torch.tensor(df["label"].to_numpy(dtype=np.float32))
        if regression
        else torch.tensor(df["label"].to_numpy(dtype=np.int64))
    )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; dynamic padding needs one")
    return Split(
        name=name,
        idx=df["idx"].to_numpy(dtype=np.int64),
        input_ids=list(enc["input_ids"]),
        token_type_ids=list(types) if types is not None else None,
        labels=labels,
        pad_id=int(tokenizer.pad_token_id),
    )


def tokenize_splits(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    max_length: int,
    task: Task,
    splits: Sequence[str] = SPLITS,
    required: Sequence[str] = ("train",),
) -> dict[str, Split]:
    """Read and tokenise `data_dir/<split>.parquet` for each split present (required ones must)."""
    data_dir = Path(data_dir)
    out = {}
    for name in splits:
        path = data_dir / f"{name}.parquet"
        if not path.exists():
            if name in required:
                raise FileNotFoundError(f"{path} not found; prepare the dataset first")
            continue
        out[name] = tokenize_split(
            read_labelled_split(path, task), name, tokenizer, max_length, task.is_regression
        )
    return out


@dataclass
class Sentences:
    """Tokenised sentences; `batch` pads dynamically."""

    input_ids: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, rows: Sequence[int]) -> Sentences:
        return Sentences([self.input_ids[r] for r in rows], self.pad_id)

    def batch(self, rows: Sequence[int], device: torch.device | str | None = None) -> dict:
        seqs = [self.input_ids[r] for r in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
