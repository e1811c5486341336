"""S2's in-loop measurements: training-engine hooks for the Fisher spectra during fine-tuning
(S2.F4) and the polar trajectory of the weights (S2.F2).

Both run at step 0, every `every` steps and at the last step, and write into the run's
``captures/`` directory at the end of training:

``fisher.parquet`` (`FisherTrace`)
    per (step, layer): ``run, step, epoch, loss, layer, n, erank, normalised_erank,
    eigenvalues``. The mini-batch is fixed for the run (N training rows drawn with the run's
    seed), so the curve over steps follows the model, not a change of batch. The model runs in
    eval mode (no dropout mask in the gradients) with every RNG state restored afterwards.

``polar.parquet`` (`PolarTrace`)
    per step: ``run, step, epoch, loss, r, phi`` with r_t = ||theta_t - theta_fin|| /
    ||theta_init - theta_fin|| and phi_t the angle (radians) between theta_t - theta_fin and
    theta_init - theta_fin, over every trainable parameter (encoder and head); theta_fin = the
    weights the run ends with. phi is 0 at the last step, where r = 0.
    theta_fin is known only at the end, so the hook keeps a float32 copy of the trainable
    weights at each measured step on disk (``<run>/polar-snapshots/``, one model's size each:
    paper scale 1.3 GB x 11 steps for bert-large) and deletes them once ``polar.parquet`` is
    written; the sums are float64. Snapshots on disk (rather than in memory) survive a kill:
    a resumed run finds those up to its checkpoint and rewrites the later ones identically.
"""

from __future__ import annotations

import math
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneatlas.analysis.capture import CAPTURES_DIR
from tuneatlas.analysis.fisher import layer_grams
from tuneatlas.analysis.fisher_trials import log_probs, spectrum_rows, trial_rows
from tuneatlas.engine.checkpoint import preserved_rng
from tuneatlas.io import load_tensors, save_tensors, write_parquet
from tuneatlas.spec import FisherSpec

FISHER_FILE = "fisher.parquet"
POLAR_FILE = "polar.parquet"
SNAPSHOT_DIR = "polar-snapshots"
INLOOP_FISHER_COLUMNS = [
    "run", "step", "epoch", "loss", "layer", "n", "erank", "normalised_erank", "eigenvalues",
]  # fmt: skip
POLAR_COLUMNS = ["run", "step", "epoch", "loss", "r", "phi"]


def _due(state: Any, every: int) -> bool:
    return state.step % every == 0 or state.step == state.total_steps


class _StepHook(ABC):
    """Shared bookkeeping: one record per measured step, kept in the checkpoint, dropped for
    steps a resumed run will replay."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"{type(self).__name__} needs every >= 1 step; got {every}")
        self.every = every
        self.records: list[dict[str, Any]] = []

    def _measured(self, step: int) -> bool:
        self.records = [r for r in self.records if r["step"] <= step]
        return any(r["step"] == step for r in self.records)

    def on_step_end(self, state: Any) -> None:
        if _due(state, self.every) and not self._measured(state.step):
            self.measure(state)

    on_train_start = on_step_end  # step 0 of a fresh run; a resumed run's step when it is due

    @abstractmethod
    def measure(self, state: Any) -> None:
        """Record this step (state.step)."""

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.records = [dict(r) for r in d["records"]]

    def _base(self, state: Any) -> dict[str, Any]:
        loss = float(state.loss) if state.step > 0 else math.nan
        return {"run": state.spec.run, "step": int(state.step), "epoch": state.epoch, "loss": loss}


class FisherTrace(_StepHook):
    """Per-layer empirical-Fisher spectra of a fixed training mini-batch during training."""

    def __init__(self, fisher: FisherSpec) -> None:
        super().__init__(fisher.every)
        self.fisher = fisher
        self._batch: dict[str, torch.Tensor] | None = None

    def measure(self, state: Any) -> None:
        if self._batch is None:
            train = state.data["train"]
            rows = trial_rows(len(train), self.fisher.batch_size, int(state.spec.seed))
            self._batch = train.batch(rows, device=state.device)
        model, batch = state.model, self._batch
        was_training = model.training
        with preserved_rng():
            model.eval()
            try:
                spectrum = layer_grams(model, lambda m: log_probs(m, batch)).spectrum(
                    self.fisher.energy
                )
            finally:
                model.train(was_training)
        base = self._base(state)
        self.records += [{**base, **row} for row in spectrum_rows(spectrum, self.fisher.batch_size)]

    def on_train_end(self, state: Any) -> None:
        self._batch = None
        if state.is_main:
            df = pd.DataFrame(self.records, columns=INLOOP_FISHER_COLUMNS)
            write_parquet(df, Path(state.out_dir) / CAPTURES_DIR / FISHER_FILE, state.recipe.meta())


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def polar_point(
    theta: dict[str, np.ndarray], init: dict[str, np.ndarray], final: dict[str, np.ndarray]
) -> tuple[float, float]:
    """(r, phi) of the weights `theta` (name -> array) on the way from `init` to `final`: sums
    in float64, tensor by tensor; (0, 0) at `final` itself."""
    sq = init_sq = cross = 0.0
    for name, fin in final.items():
        fin = np.asarray(fin, np.float64).ravel()
        d = np.asarray(theta[name], np.float64).ravel() - fin
        d0 = np.asarray(init[name], np.float64).ravel() - fin
        sq, init_sq, cross = sq + d @ d, init_sq + d0 @ d0, cross + d @ d0
    if init_sq == 0.0:
        raise ValueError("theta_init equals theta_fin: the run did not move; no polar trajectory")
    if sq == 0.0:
        return 0.0, 0.0
    cos = max(-1.0, min(1.0, cross / math.sqrt(sq * init_sq)))
    return math.sqrt(sq / init_sq), math.acos(cos)


class PolarTrace(_StepHook):
    """The polar trajectory (r_t, phi_t) of the trainable weights (module docstring)."""

    def _snapshot(self, state: Any, step: int) -> Path:
        return Path(state.out_dir) / SNAPSHOT_DIR / f"step-{step:08d}.safetensors"

    def measure(self, state: Any) -> None:
        if state.is_main:
            weights = {n: p.detach().float().cpu() for n, p in _trainable(state.model).items()}
            save_tensors(weights, self._snapshot(state, state.step))
        self.records.append(self._base(state))

    def on_train_end(self, state: Any) -> None:
        if not state.is_main:
            return
        final = {n: p.detach().float().cpu().numpy() for n, p in _trainable(state.model).items()}
        records = sorted(self.records, key=lambda r: r["step"])
        if not records or records[0]["step"] != 0:
            raise RuntimeError(
                f"run {state.spec.run}: no snapshot of step 0 in {SNAPSHOT_DIR}/; delete the run"
                " directory and train it again"
            )
        init = load_tensors(self._snapshot(state, 0))
        rows = []
        for rec in records:
            r, phi = polar_point(load_tensors(self._snapshot(state, rec["step"])), init, final)
            rows.append({**rec, "r": r, "phi": phi})
        df = pd.DataFrame(rows, columns=POLAR_COLUMNS)
        write_parquet(df, Path(state.out_dir) / CAPTURES_DIR / POLAR_FILE, state.recipe.meta())
        shutil.rmtree(Path(state.out_dir) / SNAPSHOT_DIR, ignore_errors=True)
