"""The fine-tuning recipe: classification / regression (S1, S3, and the S2/S5 fine-tunes).

Model: a `SequenceClassifier` (`tuneatlas.models.classifier.build_classifier`: the encoder of the
base model, or of the run named by `init_from`, plus a new head). Data: the prepared
`idx, text_a, text_b, label` splits (`tuneatlas.data.labelled`), tokenised once and padded per
batch. Loss: cross-entropy (MSE for regression). Evaluation: the task's metrics on a split, from
fp32 logits whatever the training precision. Output: `model/` (unless `save_model: false`) and
`eval.parquet` with the final valid/test scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneatlas.data.labelled import Split, tokenize_splits
from tuneatlas.data.tasks import Task, fine_tuning_task
from tuneatlas.engine.loop import fit
from tuneatlas.engine.recipes import Recipe, model_files_fingerprint
from tuneatlas.metrics import predictions, score
from tuneatlas.models.classifier import SequenceClassifier, build_classifier, predict
from tuneatlas.spec import TrainSpec


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


def source_rows(data_dir: Path, run: str) -> int:
    """The training rows of the dataset `data_dir` was derived from (an S5 member dataset
    records them)."""
    from tuneatlas.io import read_parquet_meta

    rows = read_parquet_meta(data_dir / "train.parquet").get("source_rows")
    if rows is None:
        raise ValueError(
            f"run {run}: steps_from 'source' needs a derived dataset that records its source's"
            f" training rows; {data_dir}/train.parquet does not (re-run cluster_data, or set"
            " studies.s5.member_steps: epochs)"
        )
    return int(rows)


class FinetuneRecipe(Recipe):
    """Fine-tune a `SequenceClassifier` on one prepared dataset."""

    name = "finetune"

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
        if spec.steps_from == "source":
            self.budget_rows = source_rows(self.data_dir, spec.run)
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
    return fit(FinetuneRecipe(spec, data_dir, model_dir, init_dir), out_dir, hooks, device)
