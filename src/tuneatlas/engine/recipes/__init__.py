"""Recipes: what one kind of training does differently; the loop (`tuneatlas.engine.loop.fit`)
does the rest.

A recipe builds the model and its data, computes the loss of a batch, evaluates a split and
writes its outputs. Everything else (seeded data order, gradient accumulation, clipping,
precision, optimiser and schedule, evaluation cadence, keep-best, checkpoint/resume, hooks,
per-step metrics, progress, DDP) belongs to the loop, so a new objective (SimCSE's contrastive
loss, causal-LM pre-training) is a new subclass and copies no loop code.

The contract, in the order the loop calls it:

``build() -> (model, data)``
    after the loop seeded every RNG; ``data["train"]`` has ``len()`` and
    ``batch(rows, device) -> dict``; sets ``monitor`` (the split scored during training, None
    for none) and ``final_splits`` (scored at the end); may set ``budget_rows`` (the training
    rows the step count is planned for; None = the train split's own).
``inputs_fingerprint() -> str``
    what a checkpoint was trained on besides the spec (data files, starting weights).
``loss(model, batch) -> scalar tensor``
    mean over the batch's examples, in fp32 (forward under ``self.autocast``).
``evaluate(model, data, split, device, with_loss) -> {metric: value}``
    includes ``self.metric``, the higher-is-better score that keep-best selects on; a recipe
    that scores no split (``monitor`` None, no ``final_splits``: masked-LM) has none.
``save(model, out_dir, final, **info)``
    the run's own outputs (model directory, final scores), after the loop wrote
    ``metrics.parquet`` and ``spec.yaml`` in ``out_dir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tuneatlas import __version__
from tuneatlas.data.tasks import SPLITS
from tuneatlas.io import git_commit, stable_hash, write_parquet

# the columns of a run's eval.parquet (its final scores)
RUN_EVAL_COLUMNS = ["run", "task", "split", "metric", "value"]


class Recipe(ABC):
    """Base class: holds the spec and the parts every recipe shares; a subclass implements
    the three abstract methods of the contract above, and `evaluate` when it scores a split."""

    name = "recipe"
    monitor: str | None = "valid"
    metric = "loss"
    final_splits: tuple[str, ...] = ("valid", "test")
    budget_rows: int | None = None

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    @abstractmethod
    def build(self) -> tuple[torch.nn.Module, dict[str, Any]]: ...

    def inputs_fingerprint(self) -> str:
        return ""

    @abstractmethod
    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def evaluate(
        self, model: Any, data: dict[str, Any], split: str, device: torch.device, with_loss: bool
    ) -> dict[str, float]:
        raise NotImplementedError(
            f"recipe {self.name} scores no split: it has monitor None and no final_splits"
        )

    def describe(self, data: dict[str, Any]) -> str:
        return f"{len(data['train'])} train rows"

    @abstractmethod
    def save(
        self, model: Any, out_dir: Path, final: dict[str, dict[str, float]], **info: Any
    ) -> None: ...

    def param_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Biases and LayerNorm weights (1-D tensors) get no weight decay, as in BERT's recipe."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when the spec asks; otherwise fp32. CPU always runs fp32, which
        keeps runs deterministic there."""
        if device.type == "cuda" and self.spec.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def write_eval(self, out_dir: Path, task: str, final: dict[str, dict[str, float]]) -> None:
        """The final scores as `out_dir/eval.parquet` (run, task, split, metric, value)."""
        rows = [
            {"run": self.spec.run, "task": task, "split": s, "metric": m, "value": v}
            for s, scores in final.items()
            for m, v in scores.items()
        ]
        write_parquet(
            pd.DataFrame(rows, columns=RUN_EVAL_COLUMNS).astype({"value": "float64"}),
            out_dir / "eval.parquet",
            self.meta(),
        )

    def meta(self) -> dict[str, str]:
        """Provenance for the run's Parquet outputs."""
        return {
            "run": self.spec.run,
            "recipe": self.name,
            "spec_hash": stable_hash(self.spec.to_dict()),
            "version": __version__,
            "git_commit": git_commit(),
        }


def model_files_fingerprint(data_dir: str | os.PathLike, source_dir: str | os.PathLike) -> str:
    """The data files' bytes and the starting model's config and weight files (size + mtime, to
    avoid hashing GBs of weights). A rebuilt dataset or model makes an old checkpoint stale even
    when the spec is unchanged."""
    parts: dict[str, str] = {}
    for name in SPLITS:
        path = Path(data_dir) / f"{name}.parquet"
        if path.exists():
            parts[f"data/{name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(Path(source_dir).iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin"):
            st = path.stat()
            parts[f"model/{path.name}"] = f"{st.st_size}:{st.st_mtime_ns}"
    return stable_hash(parts, 32)
