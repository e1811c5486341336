"""Per-example logits of a fine-tuned run on its evaluation splits (`predictions.parquet`).

Ensembles (S5) combine members from these files alone: one row per example of each split, with
the split, its row, the example's `idx`, its label, the logits `logit_0..logit_{C-1}` (fp32,
eval mode) and the argmax prediction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tuneatlas import __version__
from tuneatlas.data.labelled import tokenize_splits
from tuneatlas.engine.device import resolve_device
from tuneatlas.io import git_commit, write_parquet
from tuneatlas.models.classifier import SequenceClassifier, predict, task_of_model

PREDICTIONS_FILE = "predictions.parquet"


def write_predictions(
    model_dir: str | os.PathLike | SequenceClassifier,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    splits: Sequence[str] = ("valid", "test"),
    batch_size: int = 128,
    device: str | None = None,
    meta: dict[str, str] | None = None,
    trust_remote_code: bool = False,
) -> pd.DataFrame:
    """Write the logits of the model in `model_dir` (or of a model in memory) on each of
    `splits` present in `data_dir` (`trust_remote_code`: the config's grant for the model's own
    code)."""
    if isinstance(model_dir, SequenceClassifier):
        model, dev = model_dir, next(model_dir.parameters()).device
        model_dir = Path(data_dir)  # only names the fallback task below
    else:
        model_dir = Path(model_dir)
        dev = resolve_device(device)
        model = SequenceClassifier.load(model_dir, device=dev, trust_remote_code=trust_remote_code)
    task = task_of_model(model, model_dir.name)
    data = tokenize_splits(
        data_dir, model.tokenizer, int(model.max_length or 512), task, splits, required=()
    )
    if not data:
        raise FileNotFoundError(f"none of the splits {list(splits)} exists in {data_dir}")
    frames = []
    for name, split in data.items():
        logits = predict(model, split, batch_size, dev)
        frame = pd.DataFrame(
            {
                "split": name,
                "row": np.arange(len(split), dtype=np.int64),
                "idx": split.idx,
                "label": split.labels.numpy(),
            }
        )
        for c in range(logits.shape[1]):
            frame[f"logit_{c}"] = logits[:, c]
        frame["pred"] = logits[:, 0] if task.is_regression else logits.argmax(1)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    info = {"model_dir": str(model_dir), "task": task.name, "version": __version__}
    write_parquet(df, out, {**info, "git_commit": git_commit(), **(meta or {})})
    return df


class PredictionWriter:
    """Training hook: the final model's predictions (after keep-best) from the weights in
    memory, at the end of training, so that a run that keeps no weights (S2's sweep,
    `save_model: false`) still writes them. Rank 0 only; draws no random numbers."""

    def __init__(
        self, data_dir: str | os.PathLike, out: str | os.PathLike, batch_size: int, meta=None
    ) -> None:
        self.data_dir, self.out, self.batch_size = Path(data_dir), Path(out), batch_size
        self.meta = dict(meta or {})

    def on_train_end(self, state) -> None:
        if state.is_main:
            write_predictions(
                state.model, self.data_dir, self.out, batch_size=self.batch_size, meta=self.meta
            )


def logits_of(df: pd.DataFrame) -> np.ndarray:
    """The [N, C] logits of a predictions table, in its row order."""
    cols = sorted((c for c in df.columns if c.startswith("logit_")), key=lambda c: int(c[6:]))
    return df[cols].to_numpy(np.float64)
