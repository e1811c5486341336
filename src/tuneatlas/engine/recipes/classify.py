"""The classification / regression fine-tuning recipe (S1, S3, and the S2/S5 fine-tunes).

Model: a `SequenceClassifier` (encoder of the base model, or of the run named by `init_from`,
plus a new head). Data: the prepared `idx, text_a, text_b, label` splits, tokenised once and
padded per batch. Loss: cross-entropy (MSE for regression). Evaluation: the task's metrics on a
split, from fp32 logits whatever the training precision. Output: `model/` (unless
`save_model: false`) and `eval.parquet` with the final valid/test scores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tuneatlas.data.tasks import SPLITS, Task, fine_tuning_task
from tuneatlas.engine.recipes import Recipe, model_files_fingerprint
from tuneatlas.metrics import predictions, score
from tuneatlas.models.classifier import SequenceClassifier
from tuneatlas.models.hub import load_encoder, load_tokenizer, trusts_remote_code
from tuneatlas.spec import TrainSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


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


def task_of_model(model: SequenceClassifier, fallback_name: str) -> Task:
    """The registered task a fine-tuned model was trained on, or a minimal stand-in for an
    unregistered name (labels are then read but not range-checked against a registry row)."""
    if model.task is not None:
        try:
            return fine_tuning_task(model.task)
        except ValueError:
            pass
    return Task(
        name=model.task or fallback_name,
        kind="regression" if model.regression else "classification",
        num_labels=model.num_labels,
        metric="pearson" if model.regression else "accuracy",
        hub_path="",
        hub_name=None,
        text_a="text_a",
        text_b=None,
        label="label",
        hub_splits=(),
        synthetic="",
    )


# --------------------------------------------------------------------------------------------
# model, loss, evaluation
# --------------------------------------------------------------------------------------------


def build_classifier(
    spec: TrainSpec,
    task: Task,
    model_dir: str | os.PathLike | None,
    init_dir: str | os.PathLike | None,
) -> SequenceClassifier:
    """Encoder from `model_dir`, or the fine-tuned encoder of `init_dir` (cross fine-tuning),
    with a new head. Call after seeding: the head's init draws from the global torch RNG."""
    source = init_dir if init_dir is not None else model_dir
    if source is None:
        raise ValueError(f"run {spec.run}: pass model_dir (or init_dir for cross fine-tuning)")
    # the base model's own record of the config's trust_remote_code (fetch_model wrote it)
    trust = trusts_remote_code(model_dir if model_dir is not None else source)
    encoder = load_encoder(source, trust_remote_code=trust)
    model = SequenceClassifier(
        encoder,
        task.num_labels,
        pooling=spec.pooling,
        head=spec.head,
        head_init=spec.head_init,
        dropout=spec.dropout,
        regression=task.is_regression,
        task=task.name,
        tokenizer=load_tokenizer(source, trust_remote_code=trust),
        max_length=spec.max_length,
    )
    model.trust_remote_code = trust
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(limit, int) and spec.max_length > limit:
        raise ValueError(
            f"run {spec.run}: max_length {spec.max_length} exceeds the model's "
            f"max_position_embeddings {limit} ({source}); lower max_length in the config"
        )
    if spec.freeze_encoder:
        model.freeze_encoder()
    return model


@torch.no_grad()
def predict(
    model: SequenceClassifier, split: Split, batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits [N, C] of `split` in file order, in eval mode and fp32 whatever the training
    precision (reported scores stay exact); restores the mode."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b in split.iter_batches(batch_size, device=device):
            out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            chunks.append(out.logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def scores_from_logits(task: Task, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    pred = predictions(logits, task.is_regression)
    return {m: score(m, labels, pred) for m in task.metric_names()}


def evaluate(
    model: SequenceClassifier,
    split: Split,
    task: Task,
    batch_size: int,
    device: torch.device,
    with_loss: bool = False,
) -> dict[str, float]:
    logits = predict(model, split, batch_size, device)
    out = scores_from_logits(task, split.labels.numpy(), logits)
    if with_loss:
        out["loss"] = float(loss_fn(torch.from_numpy(logits), split.labels, task.is_regression))
    return out


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------


class ClassifyRecipe(Recipe):
    """Fine-tune a `SequenceClassifier` on one prepared dataset."""

    name = "classify"

    def __init__(
        self,
        spec: TrainSpec,
        data_dir: str | os.PathLike,
        model_dir: str | os.PathLike | None,
        init_dir: str | os.PathLike | None = None,
    ) -> None:
        if (spec.init_from is None) != (init_dir is None):
            raise ValueError(
                f"run {spec.run}: spec.init_from={spec.init_from!r} but init_dir={init_dir!r}; "
                "cross fine-tuning needs both (init_dir = runs/<init_from>/model)"
            )
        super().__init__(spec)
        self.data_dir = Path(data_dir)
        self.source_dir = Path(init_dir if init_dir is not None else model_dir)
        self.model_dir, self.init_dir = model_dir, init_dir
        self.task = fine_tuning_task(spec.task)
        self.metric = self.task.metric

    def build(self) -> tuple[SequenceClassifier, dict[str, Split]]:
        spec = self.spec
        model = build_classifier(spec, self.task, self.model_dir, self.init_dir)
        data = tokenize_splits(self.data_dir, model.tokenizer, spec.max_length, self.task)
        # Scores during training are taken on valid; a dataset without one (S3: livedoor has
        # train/test only, and the study follows test scores over steps) is monitored on test.
        self.monitor = "valid" if "valid" in data else "test"
        if self.monitor not in data:
            raise FileNotFoundError(f"{self.data_dir} has neither valid.parquet nor test.parquet")
        if spec.keep_best and self.monitor != "valid":
            raise ValueError(
                f"run {spec.run}: keep_best selects on valid, but {self.data_dir} has none"
            )
        self.final_splits = tuple(s for s in ("valid", "test") if s in data)
        return model, data

    def inputs_fingerprint(self) -> str:
        return model_files_fingerprint(self.data_dir, self.source_dir)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast(batch["input_ids"].device):
            out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return loss_fn(out.logits, batch["labels"], self.task.is_regression)

    def evaluate(
        self, model: Any, data: dict[str, Split], split: str, device: torch.device, with_loss: bool
    ) -> dict[str, float]:
        return evaluate(
            model, data[split], self.task, self.spec.eval_batch_size, device, with_loss=with_loss
        )

    def describe(self, data: dict[str, Split]) -> str:
        return f"task {self.task.name}, {len(data['train'])} train rows"

    def save(self, model: Any, out_dir: Path, final: dict[str, dict[str, float]], **info: Any):
        if self.spec.save_model:
            model.save(out_dir / "model", run=self.spec.run, **info)
        else:
            model.save_info_only(out_dir / "model", run=self.spec.run, **info)
        self.write_eval(out_dir, self.task.name, final)


def finetune(
    spec: TrainSpec,
    data_dir: str | os.PathLike,
    model_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    init_dir: str | os.PathLike | None = None,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Fine-tune one run through the engine; returns {"valid": scores, "test": scores (if a test
    split exists), "steps": int, "best_step": int | None, "resumed_from": int}."""
    from tuneatlas.engine.loop import fit

    return fit(ClassifyRecipe(spec, data_dir, model_dir, init_dir), out_dir, hooks, device)
