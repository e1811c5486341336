"""Embedding extraction for S1: per-layer CLS vectors and the last-layer max-norm token.

`extract` runs a fine-tuned model (runs/<run>/model/) over the prepared splits and writes
`embeddings.safetensors` (see docs/internals.md for the layout) plus `index.parquet` mapping
each row back to its source `idx` and label. Subset, layer and dimension analyses then work on
these arrays with the saved linear head, without running the encoder again.

Extraction stays in fp32 even on CUDA: the S1 analyses score single dimensions of these
vectors, where bf16 rounding would show.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tuneatlas import __version__
from tuneatlas.analysis.capture import EMBEDDINGS_FILE
from tuneatlas.data.labelled import Split, tokenize_splits
from tuneatlas.data.tasks import SPLITS
from tuneatlas.engine.device import resolve_device
from tuneatlas.io import git_commit, save_tensors, write_parquet
from tuneatlas.models.classifier import SequenceClassifier, maxnorm_pool, task_of_model

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"


@torch.no_grad()
def extract(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    batch_size: int = 128,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write `out_dir/embeddings.safetensors` and `out_dir/index.parquet`; returns the former.

    Per split present in `data_dir`: "<split>.cls" float32 [L+1, N, H] (index 0 = embedding
    output), "<split>.maxnorm" [N, H], "<split>.labels" [N]; "head.weight"/"head.bias" when the
    head is linear. `max_length` defaults to the one the model was trained with. A requested
    split without a file is skipped with a log line (test may be absent); none at all fails.
    `trust_remote_code` is the config's grant for the model's own code.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    dev = resolve_device(device)
    model = SequenceClassifier.load(model_dir, device=dev, trust_remote_code=trust_remote_code)
    model.eval()
    task = task_of_model(model, model_dir.name)
    max_length = int(max_length or model.max_length or 512)
    data = tokenize_splits(data_dir, model.tokenizer, max_length, task, splits=splits, required=())
    missing = [s for s in splits if s not in data]
    if missing:
        log.info("embed %s: no %s split(s) in %s, skipped", model_dir, missing, data_dir)
    if not data:
        raise FileNotFoundError(f"none of the splits {list(splits)} exists in {data_dir}")

    tensors: dict[str, np.ndarray] = {}
    index = []
    layers = int(model.encoder.config.num_hidden_layers) + 1
    for name, split in data.items():
        cls, maxnorm = _embed_split(model, split, layers, batch_size, dev, model_dir)
        labels = split.labels.numpy()
        tensors[f"{name}.cls"] = cls
        tensors[f"{name}.maxnorm"] = maxnorm
        tensors[f"{name}.labels"] = labels
        n = len(split)
        index.append(
            pd.DataFrame(
                {
                    "split": name,
                    "row": np.arange(n, dtype=np.int64),
                    "idx": split.idx,
                    "label": labels,
                }
            )
        )
        log.info(
            "embed %s: %s %d rows, %d layers x %d dims", model_dir, name, n, layers, cls.shape[2]
        )
    if model.head_kind == "linear":
        tensors["head.weight"] = model.head.weight.detach().float().cpu().numpy()
        tensors["head.bias"] = model.head.bias.detach().float().cpu().numpy()

    meta = _metadata(model, model_dir, max_length, list(data))
    path = save_tensors(tensors, out_dir / EMBEDDINGS_FILE, metadata=meta)
    write_parquet(pd.concat(index, ignore_index=True), out_dir / INDEX_FILE, meta)
    return path


def _embed_split(
    model: SequenceClassifier,
    split: Split,
    layers: int,
    batch_size: int,
    dev: torch.device,
    model_dir: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """One split's CLS vectors of every layer ``[L+1, N, H]`` and max-norm tokens ``[N, H]``."""
    n, h = len(split), model.hidden_size
    # Preallocated: at paper scale [13, N, 768] is the dominant memory, never hold it twice.
    cls = np.empty((layers, n, h), dtype=np.float32)
    maxnorm = np.empty((n, h), dtype=np.float32)
    pos = 0
    for b in split.iter_batches(batch_size, device=dev):
        out = model(
            b["input_ids"],
            b["attention_mask"],
            b.get("token_type_ids"),
            output_hidden_states=True,
        )
        hs = out.hidden_states
        if len(hs) != layers:
            raise RuntimeError(f"{model_dir}: expected {layers} hidden states, got {len(hs)}")
        k = b["input_ids"].shape[0]
        for i, layer in enumerate(hs):
            cls[i, pos : pos + k] = layer[:, 0].float().cpu().numpy()
        maxnorm[pos : pos + k] = maxnorm_pool(hs[-1], b["attention_mask"]).float().cpu().numpy()
        pos += k
    return cls, maxnorm


def _metadata(
    model: SequenceClassifier, model_dir: Path, max_length: int, splits: list[str]
) -> dict[str, str]:
    """What the embeddings file and its index record about the model they came from."""
    return {
        "model_dir": str(model_dir),
        "task": str(model.task),
        "pooling": model.pooling,
        "head": model.head_kind,
        "num_labels": str(model.num_labels),
        "regression": str(model.regression),
        "max_length": str(max_length),
        "splits": ",".join(splits),
        "version": __version__,
        "git_commit": git_commit(),
    }
