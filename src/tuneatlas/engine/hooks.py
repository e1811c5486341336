"""The hook protocol of the training loop (`tuneatlas.engine.loop.fit`), and its dispatcher.

A hook observes training (S3's embedding capture, S2's Fisher and polar traces) without
changing it: whatever it draws from an RNG or switches (train/eval mode) it restores. A hook
implements any subset of `TrainHook`'s methods; the loop calls those that exist, in the order
the hooks were given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TrainHook(Protocol):
    """What the loop calls on a hook. Every method is optional (`call_hooks` skips a missing
    one); `state` is the loop's `TrainState`."""

    def on_train_start(self, state: Any) -> None:
        """Before the first step; on resume after `load_state_dict`, with `state.step > 0`."""

    def on_step_end(self, state: Any) -> None:
        """After every optimiser step (`state.step`, `state.loss`, `state.lr` are set)."""

    def on_evaluate(self, state: Any, split: str, scores: dict[str, float]) -> None:
        """After each evaluation of `split`: during training on the monitored split, and once
        per final split after the loop (`state.final` is then True)."""

    def on_train_end(self, state: Any) -> None:
        """After the final evaluations, before the recipe saves its outputs."""

    def state_dict(self) -> dict[str, Any]:
        """What the hook must get back on resume, stored in the checkpoint with `torch.save`
        and read back with `weights_only=True`: tensors, numbers, strings, lists, dicts."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; called before `on_train_start` on resume."""


def call_hooks(hooks: Sequence[Any], name: str, *args: Any) -> None:
    """Call method `name` of every hook that has it, in order."""
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(*args)
