"""The shared bookkeeping of S2's in-loop measurement hooks (`FisherTrace`, `PolarTrace`):
measure at step 0, every `every` steps, at the `extra` steps and at the last step, one record
per measured step, kept in the checkpoint and dropped for steps a resumed run will replay."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any


def _due(state: Any, every: int, extra: tuple[int, ...] = ()) -> bool:
    return state.step % every == 0 or state.step == state.total_steps or state.step in extra


class StepHook(ABC):
    """Shared bookkeeping: one record per measured step, kept in the checkpoint, dropped for
    steps a resumed run will replay."""

    def __init__(self, every: int, extra: tuple[int, ...] = ()) -> None:
        if every < 1:
            raise ValueError(f"{type(self).__name__} needs every >= 1 step; got {every}")
        self.every = every
        self.extra = tuple(int(s) for s in extra)
        self.records: list[dict[str, Any]] = []

    def _measured(self, step: int) -> bool:
        self.records = [r for r in self.records if r["step"] <= step]
        return any(r["step"] == step for r in self.records)

    def on_step_end(self, state: Any) -> None:
        if _due(state, self.every, self.extra) and not self._measured(state.step):
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
