"""S2's Fisher spectra of a base model before fine-tuning (rule `fisher`, S2.F3 and S2.T2).

One trial = one seed: a fresh classification head drawn with that seed on the base encoder,
and N training examples drawn with it. The per-layer Gram matrices of the per-example
gradients of log p(y_i | x_i) (true labels) come from one backward pass
(`tuneatlas.analysis.fisher.grams.layer_grams`); the model is in eval mode, so no dropout mask
enters the gradients and a trial is a pure function of (model, data, seed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tuneatlas.analysis.fisher.grams import layer_grams
from tuneatlas.analysis.fisher.spectrum import FisherSpectrum
from tuneatlas.data.labelled import tokenize_splits
from tuneatlas.data.tasks import fine_tuning_task
from tuneatlas.engine.device import resolve_device, seed_everything
from tuneatlas.io import provenance, stable_hash, write_parquet
from tuneatlas.models.classifier import build_classifier
from tuneatlas.spec import TrainSpec

log = logging.getLogger(__name__)

FISHER_COLUMNS = ["model", "trial", "layer", "n", "erank", "normalised_erank", "eigenvalues"]


def log_probs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(y_i | x_i) of each example of `batch` under `model` ([N])."""
    out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    logp = F.log_softmax(out.logits.float(), dim=-1)
    return logp.gather(1, batch["labels"].view(-1, 1)).squeeze(1)


def trial_rows(n_rows: int, batch_size: int, trial: int) -> np.ndarray:
    """The training rows of a trial: `batch_size` distinct rows drawn with seed `trial`."""
    if batch_size > n_rows:
        raise ValueError(
            f"the Fisher mini-batch has {batch_size} examples but the training split has"
            f" {n_rows} rows; lower studies.s2.fisher.batch_size"
        )
    return np.sort(np.random.default_rng(trial).choice(n_rows, size=batch_size, replace=False))


def spectrum_rows(spectrum: FisherSpectrum, n: int) -> list[dict[str, Any]]:
    """One row per layer: layer, n, erank, normalised_erank, eigenvalues (descending)."""
    return [
        {
            "layer": layer,
            "n": n,
            "erank": int(spectrum.erank[layer]),
            "normalised_erank": float(spectrum.normalised_erank[layer]),
            "eigenvalues": spectrum.eigenvalues[layer].double().tolist(),
        }
        for layer in range(len(spectrum.erank))
    ]


def fisher_trial(
    spec: dict[str, Any],
    data_dir: Path,
    model_dir: Path,
    out: Path,
    device: str | None = None,
    config_hash: str = "unknown",
) -> pd.DataFrame:
    """Per-layer erank of the empirical Fisher of `model_dir` + a fresh head on a training
    mini-batch of `data_dir`, written to `out` (FISHER_COLUMNS). `spec` is a trial of the plan
    (`Plan.fishers`): label, trial, batch_size, energy, precision and the head's `train`
    spec."""
    label, trial, batch_size = spec["label"], int(spec["trial"]), int(spec["batch_size"])
    train = TrainSpec.from_dict({**spec["train"], "seed": trial})
    task = fine_tuning_task(train.task)
    if task.is_regression:
        raise ValueError(f"task {task.name}: the Fisher of log p(y|x) needs a classification task")
    dev = resolve_device(device)
    seed_everything(trial)  # the head's init draws from the global RNG
    model = build_classifier(train, task, model_dir, None).to(dev).eval()
    split = tokenize_splits(data_dir, model.tokenizer, train.max_length, task, splits=("train",))
    rows = trial_rows(len(split["train"]), batch_size, trial)
    batch = split["train"].batch(rows, device=dev)
    # a spec planned before `precision` existed was computed with float64 products
    grams = layer_grams(
        model, lambda m: log_probs(m, batch), precision=spec.get("precision", "exact")
    )
    spectrum = grams.spectrum(spec["energy"])
    df = pd.DataFrame(
        [{"model": label, "trial": trial, **row} for row in spectrum_rows(spectrum, batch_size)],
        columns=FISHER_COLUMNS,
    )
    info = {"model": label, "trial": trial, "rows": rows.tolist()}
    write_parquet(df, out, provenance(config_hash, spec_hash=stable_hash(spec), **info))
    log.info(
        "fisher %s trial %d: whole-model erank %.3f (N=%d, %d layers)",
        label,
        trial,
        float(spectrum.normalised_erank.sum()),
        batch_size,
        len(spectrum.erank),
    )
    return df
