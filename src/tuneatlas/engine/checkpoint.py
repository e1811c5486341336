"""Resumable checkpoints of the engine: one file `<out_dir>/ckpt/state.pt`, replaced atomically.

The checkpoint holds everything the rest of a run depends on (weights, optimiser, scheduler, RNG
states, step, metrics so far, best state, hook states), so a run killed at any point and started
again ends with exactly the outputs of an uninterrupted one. It is loaded with
`weights_only=True`; one written for another spec, other inputs or other hooks is discarded.

When to write one is the spec's `checkpoint_every`: an int N (0 = at epoch ends only, N > 0 =
also every N steps), "none" (never: runs that are cheap to redo, such as S2's sweep), or
"<T>min" (when T minutes of wall time passed since the last one).

Whatever the policy, a SIGTERM during training (SLURM's preemption and time-limit signal, sent
`--signal` seconds early by profiles/slurm) makes the loop write one at the step it is on and
stop (`StopOnSigterm`, `tuneatlas.errors.Preempted`): a preempted job loses no finished step.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneatlas.io import atomic_path, remove_interrupted_writes

log = logging.getLogger(__name__)

CKPT_DIR = "ckpt"
CKPT_FILE = "state.pt"
CKPT_FORMAT = 2
_MINUTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*min\s*$")


@dataclass
class CheckpointPolicy:
    """Parsed `checkpoint_every`; `due(step, epoch_end)` says whether to write one now."""

    at_epoch_ends: bool
    every_steps: int
    every_seconds: float
    last_time: float = 0.0

    @classmethod
    def parse(cls, value: int | str) -> CheckpointPolicy:
        if isinstance(value, bool):
            raise ValueError(f"checkpoint_every: {value!r} is not a step count, 'none' or 'Tmin'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"checkpoint_every: {value} must be >= 0")
            return cls(at_epoch_ends=True, every_steps=value, every_seconds=0.0)
        if str(value).strip().lower() == "none":
            return cls(at_epoch_ends=False, every_steps=0, every_seconds=0.0)
        m = _MINUTES.match(str(value))
        if not m or float(m[1]) <= 0:
            raise ValueError(
                f"checkpoint_every: {value!r} is not a step count (0 = epoch ends), 'none' or "
                "minutes such as '30min'"
            )
        return cls(at_epoch_ends=False, every_steps=0, every_seconds=60.0 * float(m[1]))

    def start(self) -> None:
        self.last_time = time.monotonic()

    def due(self, step: int, epoch_end: bool) -> bool:
        if self.every_seconds:
            if time.monotonic() - self.last_time >= self.every_seconds:
                self.last_time = time.monotonic()
                return True
            return False
        return (self.at_epoch_ends and epoch_end) or (
            self.every_steps > 0 and step % self.every_steps == 0
        )


class StopOnSigterm:
    """While entered, SIGTERM only sets `requested` (the loop checks it after each step) instead
    of ending the process; the previous handler is restored on exit. Outside the main thread,
    where Python cannot install a handler, it does nothing and SIGTERM keeps its old effect."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG state a run draws from (CUDA's only on a CUDA device), in a form
    `torch.load(weights_only=True)` reads back."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a tensor.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(s: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    if device.type == "cuda" and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch (CPU and, where available, CUDA) RNG states on exit, so
    whatever runs inside (a hook's evaluation) cannot shift the random numbers the training
    loop draws next (dropout masks, shuffling)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    saved = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def hook_names(hooks: list[Any]) -> list[str]:
    return [type(h).__qualname__ for h in hooks]


def save_checkpoint(ckpt_dir: Path, payload: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # One file, replaced atomically: a kill mid-write leaves the previous checkpoint intact,
    # and only the latest one is ever kept.
    with atomic_path(ckpt_dir / CKPT_FILE, ".pt") as tmp:
        torch.save({"format": CKPT_FORMAT, **payload}, tmp)


def load_checkpoint(
    ckpt_dir: Path, recipe: str, spec: dict[str, Any], hooks: list[Any], inputs: str
) -> dict[str, Any] | None:
    """The checkpoint in `ckpt_dir` if it belongs to this very run, else None (and removed)."""
    path = ckpt_dir / CKPT_FILE
    remove_interrupted_writes(path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is discarded, not fatal
        log.warning("discarding unreadable checkpoint %s (%s); training from scratch", path, e)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    stale = None
    if payload.get("format") != CKPT_FORMAT or payload.get("recipe") != recipe:
        stale = "it was written by another version or recipe"
    elif payload.get("spec") != spec:
        stale = "it was written for a different spec"
    elif payload.get("inputs") != inputs:
        stale = "the data or the starting model changed"
    elif payload.get("hooks_names") != hook_names(hooks):
        stale = f"written with hooks {payload.get('hooks_names')}, now {hook_names(hooks)}"
    if stale:
        log.info("discarding checkpoint %s: %s", path, stale)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    return payload
