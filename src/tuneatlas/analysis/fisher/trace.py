"""S2's Fisher spectra during fine-tuning (S2.F4): a training-engine hook, measured at step 0,
every `every` steps and at the last step, written into the run's ``captures/`` directory at the
end of training:

``fisher.parquet`` (`FisherTrace`)
    per (step, layer): ``run, step, epoch, loss, layer, n, erank, normalised_erank,
    eigenvalues``. The mini-batch is fixed for the run (N training rows drawn with the run's
    seed), so the curve over steps follows the model, not a change of batch. The model runs in
    eval mode (no dropout mask in the gradients) with every RNG state restored afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tuneatlas.analysis.capture import CAPTURES_DIR
from tuneatlas.analysis.fisher.grams import layer_grams
from tuneatlas.analysis.fisher.trials import log_probs, spectrum_rows, trial_rows
from tuneatlas.analysis.step_hook import StepHook
from tuneatlas.engine.checkpoint import preserved_rng
from tuneatlas.io import write_parquet
from tuneatlas.spec import FisherSpec

FISHER_FILE = "fisher.parquet"
INLOOP_FISHER_COLUMNS = [
    "run", "step", "epoch", "loss", "layer", "n", "erank", "normalised_erank", "eigenvalues",
]  # fmt: skip


class FisherTrace(StepHook):
    """Per-layer empirical-Fisher spectra of a fixed training mini-batch during training."""

    def __init__(self, fisher: FisherSpec) -> None:
        super().__init__(fisher.every, fisher.extra_steps)
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
                grams = layer_grams(
                    model, lambda m: log_probs(m, batch), precision=self.fisher.precision
                )
                spectrum = grams.spectrum(self.fisher.energy)
            finally:
                model.train(was_training)
        base = self._base(state)
        self.records += [{**base, **row} for row in spectrum_rows(spectrum, self.fisher.batch_size)]

    def on_train_end(self, state: Any) -> None:
        self._batch = None
        if state.is_main:
            df = pd.DataFrame(self.records, columns=INLOOP_FISHER_COLUMNS)
            write_parquet(df, Path(state.out_dir) / CAPTURES_DIR / FISHER_FILE, state.recipe.meta())
