"""In-loop embedding capture for S3: a training-engine hook that records, every Δt steps, the
last-layer [CLS] embedding of the capture split and the scores, without saving checkpoints.

Files written at the end of training to ``<out_dir>/captures/``:

``embeddings.safetensors``
    ``embeddings`` float32 ``[T, N, H]``: CLS embedding of N recorded rows at T captures;
    ``steps`` int64 ``[T]``: optimiser step of each capture (0 = before training);
    ``epochs`` float64 ``[T]``: epoch counter of the engine at each capture;
    ``rows`` int64 ``[N]``: position of each recorded row in the capture split;
    ``labels`` int64 ``[N]``: gold label of each recorded row;
    ``probe`` int64 ``[P]``: the probe set, as positions into the N recorded rows;
    ``idx`` int64 ``[N]`` (when the engine provides it): source row id (the data ``idx`` column).
    With ``CaptureSpec.test_set`` the N rows are the whole split (``rows = 0..N-1``), otherwise
    only the probe rows. String metadata: run, split, every, probe_per_class, seed, layer, pooling.
``scores.parquet``
    one row per (capture, metric[, label]): ``run, step, epoch, split, metric, label, value``;
    metric is ``accuracy``, ``macro_f1`` (label null) or ``f1`` (label = class id).

Storage is points x dims x captures floats (paper: 405 x 768 x 49 x 4 B ≈ 61 MB), against
hundreds of MB per saved checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneatlas.io import load_tensors, save_tensors, write_parquet
from tuneatlas.metrics import per_class_f1, score
from tuneatlas.spec import CaptureSpec

CAPTURES_DIR = "captures"
EMBEDDINGS_FILE = "embeddings.safetensors"
SCORES_FILE = "scores.parquet"
SCORE_COLUMNS = ["run", "step", "epoch", "split", "metric", "label", "value"]


# --- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Captures:
    """What one run captured: embeddings ``[T, N, H]`` with their steps, rows and labels."""

    steps: np.ndarray  # [T] int64
    epochs: np.ndarray  # [T] float64
    embeddings: np.ndarray  # [T, N, H] float32
    rows: np.ndarray  # [N] int64, position in the capture split
    labels: np.ndarray  # [N] int64
    probe: np.ndarray  # [P] int64, positions into the N rows
    meta: Mapping[str, str]
    idx: np.ndarray | None = None  # [N] int64 source row ids, when the engine provides them

    def points(self, which: str = "probe") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings ``[T, n, H]``, labels ``[n]``, split rows ``[n]``) of probe or all rows."""
        if which == "probe":
            sel = self.probe
        elif which == "all":
            sel = np.arange(self.rows.size)
        else:
            raise ValueError(f"points must be 'probe' or 'all'; got {which!r}")
        return self.embeddings[:, sel], self.labels[sel], self.rows[sel]


def load_captures(path: str | os.PathLike) -> Captures:
    """Read ``embeddings.safetensors`` from a captures directory (or the file itself)."""
    path = Path(path)
    file = path / EMBEDDINGS_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"no captures at {file}; the run needs `capture.every > 0` in its spec and must have "
            "finished (captures are written at the end of training)"
        )
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    t = load_tensors(file)
    missing = {"embeddings", "steps", "rows", "labels", "probe"} - set(t)
    if missing:
        raise ValueError(
            f"{file} lacks tensors {sorted(missing)}; it was not written by capture.py"
        )
    epochs = t.get("epochs", np.full(t["steps"].shape, np.nan))
    return Captures(
        steps=t["steps"].astype(np.int64),
        epochs=epochs.astype(np.float64),
        embeddings=t["embeddings"],
        rows=t["rows"].astype(np.int64),
        labels=t["labels"].astype(np.int64),
        probe=t["probe"].astype(np.int64),
        meta=meta,
        idx=t["idx"].astype(np.int64) if "idx" in t else None,
    )


def load_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``scores.parquet`` from a captures directory (or the file itself)."""
    path = Path(path)
    file = path / SCORES_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"no capture scores at {file}; did the run capture (capture.every > 0)?"
        )
    return pd.read_parquet(file)


def write_captures(
    out_dir: str | os.PathLike,
    *,
    steps: np.ndarray,
    epochs: np.ndarray,
    embeddings: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    probe: np.ndarray,
    scores: pd.DataFrame,
    idx: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``embeddings.safetensors`` and ``scores.parquet`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    T, N = embeddings.shape[:2] if embeddings.ndim == 3 else (-1, -1)
    if embeddings.ndim != 3 or len(steps) != T or len(rows) != N or len(labels) != N:
        raise ValueError(
            f"inconsistent captures: embeddings {embeddings.shape}, steps {len(steps)}, "
            f"rows {len(rows)}, labels {len(labels)}"
        )
    if len(probe) and (np.min(probe) < 0 or np.max(probe) >= N):
        raise ValueError(f"probe positions must index the {N} recorded rows")
    tensors = {
        "embeddings": embeddings,
        "steps": np.asarray(steps, dtype=np.int64),
        "epochs": np.asarray(epochs, dtype=np.float64),
        "rows": np.asarray(rows, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
        "probe": np.asarray(probe, dtype=np.int64),
    }
    if idx is not None:
        if len(idx) != N:
            raise ValueError(f"idx has {len(idx)} entries for {N} recorded rows")
        tensors["idx"] = np.asarray(idx, dtype=np.int64)
    save_tensors(
        tensors,
        out_dir / EMBEDDINGS_FILE,
        metadata={k: str(v) for k, v in (meta or {}).items()},
    )
    df = scores.reindex(columns=SCORE_COLUMNS).copy()
    df["label"] = df["label"].astype("Int64")
    write_parquet(df, out_dir / SCORES_FILE, {k: str(v) for k, v in (meta or {}).items()})
    return out_dir


def select_probe(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random rows of each class (all rows of a smaller class), sorted by class then
    row. A dedicated generator keeps the choice independent of the training RNG streams."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(per_class, members.size)
        chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


# --- the hook ---------------------------------------------------------------------------------
Batch = dict[str, Any]  # input_ids, attention_mask[, token_type_ids] [B, L] on the device
EncodeFn = Callable[[Any, Batch], tuple[Any, Any]]


def _split_of(data: Any, split: str) -> Any:
    if isinstance(data, Mapping):
        if split not in data:
            raise KeyError(f"capture split {split!r} not in the engine's data (has {sorted(data)})")
        return data[split]
    if hasattr(data, split):
        return getattr(data, split)
    raise KeyError(f"capture split {split!r} not found on the engine's data {type(data)}")


def split_labels(data: Any, split: str) -> np.ndarray:
    """Gold labels ``[N]`` of the capture split, as int64 (S3 is defined for classification)."""
    part = _split_of(data, split)
    labels = getattr(part, "labels", None)
    if labels is None and isinstance(part, Mapping):
        labels = part.get("labels")
    if labels is None:
        raise KeyError(f"capture split {split!r} has no labels")
    labels = np.asarray(labels.cpu().numpy() if hasattr(labels, "cpu") else labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"capture split {split!r} needs integer class labels [N]; got {labels.dtype} "
            f"{labels.shape} (S3 capture is for classification tasks)"
        )
    return labels.astype(np.int64)


def split_idx(data: Any, split: str) -> np.ndarray | None:
    """Source row ids (the data ``idx`` column) of the capture split, when the engine has them."""
    idx = getattr(_split_of(data, split), "idx", None)
    return None if idx is None else np.asarray(idx, dtype=np.int64)


def iter_split(
    data: Any, split: str, batch_size: int, device: Any, rows: np.ndarray | None = None
) -> Iterator[Batch]:
    """Batches of the capture split, over ``rows`` (default: all rows in file order).

    The engine's `tuneatlas.data.labelled.Split` pads each batch itself
    (``iter_batches``); a plain mapping of padded tensors ``input_ids, attention_mask[,
    token_type_ids]`` is sliced.
    """
    part = _split_of(data, split)
    if hasattr(part, "iter_batches"):
        yield from part.iter_batches(batch_size, rows=rows, device=device)
        return
    if not isinstance(part, Mapping) or "input_ids" not in part or "attention_mask" not in part:
        raise TypeError(
            f"capture split {split!r} is a {type(part)}; expected a"
            " tuneatlas.data.labelled.Split or a mapping with input_ids and"
            " attention_mask tensors"
        )
    n = int(part["input_ids"].shape[0])
    order = None if rows is None else np.asarray(rows, dtype=np.int64)
    for start in range(0, n if order is None else order.size, batch_size):
        sel: Any = (
            slice(start, start + batch_size)
            if order is None
            else order[start : start + batch_size].tolist()
        )
        yield {
            k: part[k][sel].to(device)
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if part.get(k) is not None
        }


def length_order(data: Any, split: str) -> np.ndarray:
    """Rows of the capture split sorted by token count (stable), so that each batch pads to
    nearly its own rows' length; file order for pre-padded mapping splits."""
    part = _split_of(data, split)
    ids = getattr(part, "input_ids", None)
    if hasattr(part, "iter_batches") and isinstance(ids, list):
        return np.argsort(np.fromiter((len(r) for r in ids), np.int64, len(ids)), kind="stable")
    return np.arange(len(split_labels(data, split)), dtype=np.int64)


def cls_and_logits(model: Any, batch: Batch) -> tuple[Any, Any]:
    """Last-layer [CLS] vector ``[B, H]`` and logits ``[B, C]`` of a `SequenceClassifier`.

    With CLS pooling the head's input is that vector; with max-norm pooling the CLS vector is
    read from the last hidden state instead, since S3 is defined on CLS.
    """
    args = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    if getattr(model, "pooling", "cls") == "cls":
        out = model(*args)
        return out.pooled, out.logits
    out = model(*args, output_hidden_states=True)
    return out.hidden_states[-1][:, 0], out.logits


class EmbeddingCapture:
    """Training hook: at step 0, every ``capture.every`` steps and at the last step, record the
    last-layer CLS embedding of the capture split and its scores; write them at the end.

    The model runs in eval mode without gradients, with all RNG states restored afterwards and
    the train/eval mode put back, so a run with capture follows exactly the same trajectory as
    one without. Only embeddings and scores are kept, never weights. Embeddings are computed in
    float32 even on GPU (no bf16 autocast): trajectories are differences of nearby vectors, and
    bf16 rounding noise would be of the order of the stay thresholds. The capture split's
    padded batches are built once per run, with rows sorted by length so each batch pads only
    to its own longest row; results are put back in split order.
    """

    def __init__(
        self,
        capture: CaptureSpec,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        encode: EncodeFn = cls_and_logits,
    ) -> None:
        if capture.every < 1:
            raise ValueError(f"EmbeddingCapture needs capture.every >= 1 step; got {capture.every}")
        if capture.probe_per_class < 0:
            raise ValueError(f"capture.probe_per_class must be >= 0; got {capture.probe_per_class}")
        self.capture = capture
        self.seed = seed  # None: the run's own seed (state.spec.seed)
        self.batch_size = batch_size  # None: the run's eval batch size
        self.encode = encode
        self._steps: list[int] = []
        self._epochs: list[float] = []
        self._embeddings: list[np.ndarray] = []
        self._scores: list[dict[str, Any]] = []
        self._rows: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._probe: np.ndarray | None = None
        self._idx: np.ndarray | None = None
        self._run = ""
        self._seed_used: int | None = seed
        # The capture split never changes during a run: its padded batches (length-sorted, on
        # the device) and labels are built once, not re-collated at every capture.
        self._cache: tuple[Any, list[Batch], np.ndarray, np.ndarray] | None = None

    # -- engine hooks --
    def on_train_start(self, state: Any) -> None:
        self._run = str(getattr(state.spec, "run", ""))
        if self._probe is None:
            labels = split_labels(state.data, self.capture.split)
            seed = self.seed if self.seed is not None else int(getattr(state.spec, "seed", 0))
            self._seed_used = seed
            probe_rows = select_probe(labels, self.capture.probe_per_class, seed)
            if self.capture.test_set:
                self._rows = np.arange(labels.size, dtype=np.int64)
                self._probe = probe_rows
            else:
                self._rows = probe_rows
                self._probe = np.arange(probe_rows.size, dtype=np.int64)
            self._labels = labels[self._rows]
            idx = split_idx(state.data, self.capture.split)
            self._idx = None if idx is None else idx[self._rows]
        # Step 0 on a fresh run. On resume only a step on the Δt grid is captured (and only if
        # missing), so an interrupted run ends with exactly the captures of an uninterrupted one.
        if state.step % self.capture.every == 0:
            self._maybe_capture(state)

    def on_step_end(self, state: Any) -> None:
        # The last step is captured here rather than in on_train_end, where the engine may
        # already have swapped in the best checkpoint's weights (keep_best).
        last = getattr(state, "total_steps", None)
        if state.step % self.capture.every == 0 or state.step == last:
            self._maybe_capture(state)

    def on_train_end(self, state: Any) -> None:
        if not self._steps:  # an engine without total_steps: capture what it ends with
            self._maybe_capture(state)
        self._cache = None  # free the device copies of the capture batches
        self.write(Path(state.out_dir) / CAPTURES_DIR)

    # -- resume --
    def state_dict(self) -> dict[str, Any]:
        """Everything captured so far, as tensors and plain containers (weights_only-loadable)."""
        import torch

        def tensor(a: np.ndarray | None, dtype: Any) -> Any:
            return None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype)

        emb = np.stack(self._embeddings) if self._embeddings else None
        return {
            "steps": list(self._steps),
            "epochs": list(self._epochs),
            "embeddings": tensor(emb, torch.float32),
            "scores": [dict(r) for r in self._scores],
            "rows": tensor(self._rows, torch.int64),
            "labels": tensor(self._labels, torch.int64),
            "probe": tensor(self._probe, torch.int64),
            "idx": tensor(self._idx, torch.int64),
            "run": self._run,
            "seed": self._seed_used,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        def arr(x: Any) -> np.ndarray | None:
            return None if x is None else np.asarray(x.cpu().numpy() if hasattr(x, "cpu") else x)

        self._steps = [int(s) for s in d["steps"]]
        self._epochs = [float(e) for e in d["epochs"]]
        emb = arr(d["embeddings"])
        self._embeddings = [] if emb is None else [e.astype(np.float32) for e in emb]
        if len(self._embeddings) != len(self._steps):
            raise ValueError(
                f"capture state is inconsistent: {len(self._steps)} steps, "
                f"{len(self._embeddings)} embedding captures"
            )
        self._scores = [dict(r) for r in d["scores"]]
        self._rows, self._labels, self._probe = arr(d["rows"]), arr(d["labels"]), arr(d["probe"])
        self._idx = arr(d.get("idx"))
        self._run = str(d.get("run", ""))
        self._seed_used = d.get("seed")

    # -- capture --
    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def _maybe_capture(self, state: Any) -> None:
        step = int(state.step)
        if step in self._steps:
            return
        if self._steps and step < self._steps[-1]:
            # Restored to a point before the last capture: drop the captures the replayed
            # steps will produce again.
            keep = [i for i, s in enumerate(self._steps) if s < step]
            self._steps = [self._steps[i] for i in keep]
            self._epochs = [self._epochs[i] for i in keep]
            self._embeddings = [self._embeddings[i] for i in keep]
            self._scores = [r for r in self._scores if r["step"] < step]
        emb, scores = self._run_model(state)
        epoch = float(getattr(state, "epoch", np.nan))
        self._steps.append(step)
        self._epochs.append(epoch)
        self._embeddings.append(emb)
        for metric, label, value in scores:
            self._scores.append(
                {
                    "run": self._run,
                    "step": step,
                    "epoch": epoch,
                    "split": self.capture.split,
                    "metric": metric,
                    "label": label,
                    "value": value,
                }
            )

    def _batches(self, state: Any, bs: int, device: Any) -> tuple[list[Batch], np.ndarray, Any]:
        """(padded batches in length order, that order, labels): built on the first capture."""
        part = _split_of(state.data, self.capture.split)
        key = (part, bs, str(device))
        cached = self._cache
        if cached is None or cached[0][0] is not part or cached[0][1:] != key[1:]:
            order = length_order(state.data, self.capture.split)
            batches = list(iter_split(state.data, self.capture.split, bs, device, rows=order))
            labels = split_labels(state.data, self.capture.split)
            cached = self._cache = (key, batches, order, labels)
        return cached[1], cached[2], cached[3]

    def _run_model(self, state: Any) -> tuple[np.ndarray, list[tuple[str, int | None, float]]]:
        import torch

        # here, not at the top: the S3 tables import this module and need no torch
        from tuneatlas.engine.checkpoint import preserved_rng

        if self._rows is None:
            raise RuntimeError("EmbeddingCapture: on_train_start must run before any capture")
        model = state.model
        device = getattr(state, "device", None) or "cpu"
        bs = self.batch_size or int(getattr(state.spec, "eval_batch_size", 128))
        batches, order, labels = self._batches(state, bs, device)
        was_training = model.training
        cls_parts, logit_parts = [], []
        with preserved_rng(), torch.no_grad():
            model.eval()
            try:
                for batch in batches:
                    cls, logits = self.encode(model, batch)
                    cls_parts.append(cls.float().cpu().numpy())
                    logit_parts.append(logits.float().cpu().numpy())
            finally:
                model.train(was_training)
        cls_sorted = np.concatenate(cls_parts)
        if cls_sorted.shape[0] != labels.size or order.size != labels.size:
            raise RuntimeError(
                f"capture split {self.capture.split!r}: {cls_sorted.shape[0]} embeddings for "
                f"{labels.size} labels"
            )
        # Back from length order to split order: row order[i] was computed at position i.
        logits_sorted = np.concatenate(logit_parts)
        logits = np.empty_like(logits_sorted)
        logits[order] = logits_sorted
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        preds = logits.argmax(axis=-1)
        per = per_class_f1(labels, preds, int(logits.shape[-1]))
        # macro-F1 as scikit-learn's average="macro": the mean over the classes present in the
        # gold labels or the predictions (one f1_score call fewer per capture).
        present = np.zeros(per.size, dtype=bool)
        present[np.unique(np.concatenate([labels, preds]))] = True
        scores: list[tuple[str, int | None, float]] = [
            ("accuracy", None, score("accuracy", labels, preds)),
            ("macro_f1", None, float(np.mean(per[present]))),
        ]
        scores += [("f1", c, float(v)) for c, v in enumerate(per)]
        return np.ascontiguousarray(cls_sorted[position[self._rows]], dtype=np.float32), scores

    # -- output --
    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write the captures so far to ``out_dir`` (the engine's ``out_dir/captures``)."""
        if not self._steps or self._rows is None:
            raise RuntimeError(
                "EmbeddingCapture.write: nothing captured (on_train_start never ran)"
            )
        order = np.argsort(self._steps, kind="stable")
        meta = {
            "run": self._run,
            "split": self.capture.split,
            "every": self.capture.every,
            "probe_per_class": self.capture.probe_per_class,
            "test_set": self.capture.test_set,
            "seed": self._seed_used,
            "layer": "last",
            "pooling": "cls",
        }
        return write_captures(
            out_dir,
            steps=np.asarray(self._steps)[order],
            epochs=np.asarray(self._epochs)[order],
            embeddings=np.stack(self._embeddings)[order],
            rows=self._rows,
            labels=self._labels,
            probe=self._probe,
            idx=self._idx,
            scores=pd.DataFrame(self._scores, columns=SCORE_COLUMNS),
            meta=meta,
        )
