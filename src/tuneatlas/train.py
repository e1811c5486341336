"""The one training engine: every fine-tuning run of every study goes through `train`.

One flat loop (no Trainer): seeded model build, per-epoch shuffling from a generator seeded by
(seed, epoch), AdamW + schedule from the spec, gradient clipping, validation at epoch ends (and
every `eval_every` steps), optional keep-best, per-step metrics, hooks, and resumable
checkpoints in `<out_dir>/ckpt/`. On CPU a fixed spec gives bit-identical metrics, and a run
killed at any point and started again ends with exactly the metrics of an uninterrupted run:
the checkpoint holds everything that the rest of the run depends on (weights, optimiser,
scheduler, RNG states, step, metrics so far, best state, hook states), and the data order of
an epoch is a pure function of (seed, epoch).

Hooks (docs/internals.md): any object with some of `on_train_start(state)`,
`on_step_end(state)`, `on_evaluate(state, split, scores)`, `on_train_end(state)` and, for
resume, `state_dict()` / `load_state_dict(d)`. On resume `load_state_dict` is called before
`on_train_start`, which then sees `state.step > 0`. Hook state is stored with `torch.save`
and read back with `weights_only=True`: keep it to tensors, numbers, strings, lists, dicts.

Outputs in `out_dir`: `model/` (SequenceClassifier.save), `metrics.parquet`, `eval.parquet`,
`spec.yaml`; all written atomically, after training, and `ckpt/` is removed once they exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tuneatlas import __version__
from tuneatlas.io import (
    atomic_path,
    git_commit,
    remove_interrupted_writes,
    stable_hash,
    write_parquet,
    write_yaml,
)
from tuneatlas.metrics import predictions, score
from tuneatlas.models import SequenceClassifier, load_encoder, load_tokenizer
from tuneatlas.optim import AdamW, make_scheduler
from tuneatlas.spec import TrainSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CKPT_DIR = "ckpt"
CKPT_FILE = "state.pt"
CKPT_FORMAT = 1
METRICS_COLUMNS = ["run", "step", "epoch", "lr", "loss", "split", "metric", "value"]
EVAL_COLUMNS = ["run", "task", "split", "metric", "value"]


# --------------------------------------------------------------------------------------------
# task registry access (the one dependency on tuneatlas.tasks)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "classification" | "regression"
    num_labels: int
    metric: str
    extra_metrics: tuple[str, ...] = ()

    @property
    def regression(self) -> bool:
        return self.kind == "regression"

    def metric_names(self) -> list[str]:
        """Task metric first, then accuracy/macro-F1 (classification) and the task's extras."""
        names = [self.metric]
        if not self.regression:
            names += ["accuracy", "macro_f1"]
        names += list(self.extra_metrics)
        return list(dict.fromkeys(names))


def task_info(name: str) -> TaskInfo:
    """Kind, label count and metric of a registered fine-tuning task."""
    from tuneatlas.tasks import TASKS

    try:
        t = TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None
    if t.kind not in ("classification", "regression") or not t.metric:
        raise ValueError(f"task {name!r} is a {t.kind}, not a fine-tuning task")
    return TaskInfo(
        name=name,
        kind=t.kind,
        num_labels=int(t.num_labels),
        metric=t.metric,
        extra_metrics=tuple(getattr(t, "extra_metrics", ()) or ()),
    )


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One tokenised split, unpadded; `batch(rows)` pads dynamically to the longest row."""

    name: str
    idx: np.ndarray  # int64 row ids from the parquet `idx` column
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor  # int64 (classification) or float32 (regression)
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int], device: torch.device | str | None = None) -> dict:
        rows = [int(r) for r in rows]
        width = max(len(self.input_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(self.input_ids[r])
            ids[i, :n] = torch.tensor(self.input_ids[r], dtype=torch.long)
            mask[i, :n] = 1
            if self.token_type_ids is not None:
                types[i, :n] = torch.tensor(self.token_type_ids[r], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[rows]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = types
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

    def iter_batches(
        self,
        batch_size: int,
        rows: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> Iterator[dict]:
        """Batches over `rows` (default: all rows in file order)."""
        rows = list(range(len(self))) if rows is None else [int(r) for r in rows]
        for i in range(0, len(rows), batch_size):
            yield self.batch(rows[i : i + batch_size], device)

    def subset(self, rows: Sequence[int]) -> Split:
        rows = [int(r) for r in rows]
        return Split(
            name=self.name,
            idx=self.idx[rows],
            input_ids=[self.input_ids[r] for r in rows],
            token_type_ids=None
            if self.token_type_ids is None
            else [self.token_type_ids[r] for r in rows],
            labels=self.labels[rows],
            pad_id=self.pad_id,
        )


def read_split(path: Path, task: TaskInfo) -> pd.DataFrame:
    """Read one prepared split and check what the engine relies on (columns, labels)."""
    df = pd.read_parquet(path)
    missing = {"idx", "text_a", "text_b", "label"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing columns {sorted(missing)}; prepared splits have idx, text_a, "
            "text_b, label (run the prepare step again)"
        )
    if len(df) == 0:
        raise ValueError(f"{path}: the split is empty")
    bad_text = df["text_a"].isna() | (df["text_a"].astype(str).str.len() == 0)
    if bad_text.any():
        raise ValueError(f"{path}: empty text_a at row {int(np.flatnonzero(bad_text)[0])}")
    has_b = df["text_b"].notna()
    if has_b.any() and not has_b.all():
        raise ValueError(
            f"{path}: text_b is null at row {int(np.flatnonzero(~has_b)[0])} but set elsewhere; "
            "a task is either single-sentence (all null) or pairs (none null)"
        )
    if df["label"].isna().any():
        raise ValueError(
            f"{path}: missing label at row {int(np.flatnonzero(df['label'].isna())[0])}"
        )
    if not task.regression:
        labels = df["label"].to_numpy()
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{path}: task {task.name} needs integer class labels")
        bad = (labels < 0) | (labels >= task.num_labels)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: label {labels[r]} at row {r} is outside 0..{task.num_labels - 1} "
                f"for task {task.name}"
            )
    return df


def tokenize_split(
    df: pd.DataFrame, name: str, tokenizer: Any, max_length: int, regression: bool
) -> Split:
    text_a = df["text_a"].astype(str).tolist()
    text_b = df["text_b"].astype(str).tolist() if df["text_b"].notna().all() else None
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids")
    labels = (
        torch.tensor(df["label"].to_numpy(dtype=np.float32))
        if regression
        else torch.tensor(df["label"].to_numpy(dtype=np.int64))
    )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; dynamic padding needs one")
    return Split(
        name=name,
        idx=df["idx"].to_numpy(dtype=np.int64),
        input_ids=list(enc["input_ids"]),
        token_type_ids=list(types) if types is not None else None,
        labels=labels,
        pad_id=int(tokenizer.pad_token_id),
    )


def load_splits(
    data_dir: str | os.PathLike,
    tokenizer: Any,
    max_length: int,
    task: TaskInfo,
    splits: Sequence[str] = SPLITS,
    required: Sequence[str] = ("train",),
) -> dict[str, Split]:
    """Read and tokenise `data_dir/<split>.parquet` for each split present (required ones must)."""
    data_dir = Path(data_dir)
    out = {}
    for name in splits:
        path = data_dir / f"{name}.parquet"
        if not path.exists():
            if name in required:
                raise FileNotFoundError(f"{path} not found; prepare the dataset first")
            continue
        out[name] = tokenize_split(
            read_split(path, task), name, tokenizer, max_length, task.regression
        )
    return out


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; otherwise fp32. CPU always runs fp32, which keeps
    runs deterministic there."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: SequenceClassifier, split: Split, batch_size: int, device: torch.device
) -> np.ndarray:
    """Logits [N, C] of `split` in file order, in eval mode and fp32 whatever the training
    precision (reported scores stay exact); restores the mode."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for b in split.iter_batches(batch_size, device=device):
            out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            chunks.append(out.logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def scores_from_logits(task: TaskInfo, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    pred = predictions(logits, task.regression)
    return {m: score(m, labels, pred) for m in task.metric_names()}


def evaluate(
    model: SequenceClassifier,
    split: Split,
    task: TaskInfo,
    batch_size: int,
    device: torch.device,
    with_loss: bool = False,
) -> dict[str, float]:
    logits = predict(model, split, batch_size, device)
    out = scores_from_logits(task, split.labels.numpy(), logits)
    if with_loss:
        out["loss"] = float(loss_fn(torch.from_numpy(logits), split.labels, task.regression))
    return out


# --------------------------------------------------------------------------------------------
# state, hooks, checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What hooks see. `epoch` is fractional: completed steps / steps per epoch."""

    spec: TrainSpec
    out_dir: Path
    device: torch.device
    data: dict[str, Split] = field(repr=False)
    model: SequenceClassifier = field(repr=False)
    optimizer: torch.optim.Optimizer = field(repr=False)
    scheduler: Any = field(repr=False)
    task: TaskInfo
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: float = 0.0
    loss: float = float("nan")
    lr: float = float("nan")
    final: bool = False  # True during the final evaluations after the loop


def _call(hooks: Sequence[Any], name: str, *args: Any) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a tensor.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(s: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    if device.type == "cuda" and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))


def _hook_names(hooks: Sequence[Any]) -> list[str]:
    return [type(h).__qualname__ for h in hooks]


def _save_checkpoint(ckpt_dir: Path, payload: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # One file, replaced atomically: a kill mid-write leaves the previous checkpoint intact,
    # and only the latest one is ever kept.
    with atomic_path(ckpt_dir / CKPT_FILE, ".pt") as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(
    ckpt_dir: Path, spec: TrainSpec, hooks: Sequence[Any], inputs: str
) -> dict[str, Any] | None:
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
    if payload.get("format") != CKPT_FORMAT or payload.get("spec") != spec.to_dict():
        log.info("discarding checkpoint %s: it was written for a different spec", path)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if payload.get("inputs") != inputs:
        log.info("discarding checkpoint %s: the data or the starting model changed", path)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if payload.get("hooks_names") != _hook_names(hooks):
        log.info(
            "discarding checkpoint %s: written with hooks %s, now %s",
            path,
            payload.get("hooks_names"),
            _hook_names(hooks),
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    return payload


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto": CUDA when available, else CPU; anything else as torch names it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def inputs_fingerprint(data_dir: str | os.PathLike, source_dir: str | os.PathLike) -> str:
    """What a checkpoint was trained on besides the spec: the data files' bytes and the starting
    model's config and weight files (size + mtime, to avoid hashing GBs of weights). A rebuilt
    dataset or model makes an old checkpoint stale even when the spec is unchanged."""
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Shuffled row order of one epoch: a pure function of (seed, epoch), so resume sees it."""
    g = torch.Generator().manual_seed(int(stable_hash(["epoch-order", seed, epoch], 15), 16))
    return torch.randperm(n, generator=g)


def subsample_rows(n: int, k: int | None, seed: int) -> list[int] | None:
    """Seeded subset of k of n training rows (kept in file order), or None for all rows."""
    if k is None or k >= n:
        return None
    if k <= 0:
        raise ValueError(f"max_train_samples must be positive, got {k}")
    g = torch.Generator().manual_seed(int(stable_hash(["subsample", seed], 15), 16))
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def plan_steps(spec: TrainSpec, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps): ceil(n / batch) per epoch, `epochs` of them, capped."""
    spe = math.ceil(n_train / spec.batch_size)
    total = math.ceil(spec.epochs * spe - 1e-9)
    if spec.max_steps is not None:
        total = min(total, int(spec.max_steps))
    if total <= 0:
        raise ValueError(
            f"run {spec.run}: no training steps (epochs={spec.epochs}, max_steps={spec.max_steps})"
        )
    return spe, total


def _param_groups(model: SequenceClassifier, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and LayerNorm weights (1-D tensors) get no weight decay, as in BERT's recipe.
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _progress(total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        mininterval=0.5 if tty else 10.0,
        dynamic_ncols=tty,
        ascii=not tty,
    )


def build_model(
    spec: TrainSpec,
    task: TaskInfo,
    model_dir: str | os.PathLike | None,
    init_dir: str | os.PathLike | None,
) -> SequenceClassifier:
    """Encoder from `model_dir`, or the fine-tuned encoder of `init_dir` (cross fine-tuning),
    with a new head. Call after seeding: the head's init draws from the global torch RNG."""
    source = init_dir if init_dir is not None else model_dir
    if source is None:
        raise ValueError(f"run {spec.run}: pass model_dir (or init_dir for cross fine-tuning)")
    encoder = load_encoder(source)
    model = SequenceClassifier(
        encoder,
        task.num_labels,
        pooling=spec.pooling,
        head=spec.head,
        dropout=spec.dropout,
        regression=task.regression,
        task=task.name,
        tokenizer=load_tokenizer(source),
        max_length=spec.max_length,
    )
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if isinstance(limit, int) and spec.max_length > limit:
        raise ValueError(
            f"run {spec.run}: max_length {spec.max_length} exceeds the model's "
            f"max_position_embeddings {limit} ({source}); lower max_length in the config"
        )
    if spec.freeze_encoder:
        model.freeze_encoder()
    return model


def train(
    spec: TrainSpec,
    data_dir: str | os.PathLike,
    model_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    init_dir: str | os.PathLike | None = None,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Fine-tune one run; returns {"valid": scores, "test": scores (if a test split exists),
    "steps": int, "best_step": int | None, "resumed_from": int}."""
    if (spec.init_from is None) != (init_dir is None):
        raise ValueError(
            f"run {spec.run}: spec.init_from={spec.init_from!r} but init_dir={init_dir!r}; "
            "cross fine-tuning needs both (init_dir = runs/<init_from>/model)"
        )
    t0 = time.time()
    hooks = list(hooks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / CKPT_DIR
    dev = resolve_device(device)
    task = task_info(spec.task)

    seed_everything(spec.seed)
    model = build_model(spec, task, model_dir, init_dir)
    data = load_splits(data_dir, model.tokenizer, spec.max_length, task)
    # Scores during training are taken on valid; a dataset without one (S3: livedoor has
    # train/test only, and the study follows test scores over steps) is monitored on test.
    monitor = "valid" if "valid" in data else "test"
    if monitor not in data:
        raise FileNotFoundError(f"{data_dir} has neither valid.parquet nor test.parquet")
    if spec.keep_best and monitor != "valid":
        raise ValueError(f"run {spec.run}: keep_best selects on valid, but {data_dir} has none")
    rows = subsample_rows(len(data["train"]), spec.max_train_samples, spec.seed)
    if rows is not None:
        data["train"] = data["train"].subset(rows)
    train_split = data["train"]
    spe, total = plan_steps(spec, len(train_split))

    model.to(dev)
    model.train()
    o = spec.optim
    optimizer = AdamW(
        _param_groups(model, o.weight_decay),
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
        weight_decay=o.weight_decay,
        correct_bias=o.correct_bias,
    )
    scheduler = make_scheduler(optimizer, spec.schedule, spe, total)
    trainable = [p for p in model.parameters() if p.requires_grad]

    state = TrainState(
        spec=spec,
        out_dir=out_dir,
        device=dev,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        task=task,
        steps_per_epoch=spe,
        total_steps=total,
    )
    metric_rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": None, "step": None, "state": None}

    inputs = inputs_fingerprint(data_dir, init_dir if init_dir is not None else model_dir)
    ckpt = _load_checkpoint(ckpt_dir, spec, hooks, inputs)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        metric_rows = list(ckpt["rows"])
        best = dict(ckpt["best"])
        for h, hs in zip(hooks, ckpt["hooks"], strict=True):
            if hs is not None:
                h.load_state_dict(hs)
        _set_rng_state(ckpt["rng"], dev)
        state.step = int(ckpt["step"])
        state.epoch = state.step / spe
        log.info("run %s: resuming from checkpoint at step %d/%d", spec.run, state.step, total)
    resumed_from = state.step

    log.info(
        "run %s: task %s, %d train rows, %d steps (%d per epoch), %d trainable params, device %s",
        spec.run,
        task.name,
        len(train_split),
        total,
        spe,
        sum(p.numel() for p in trainable),
        dev,
    )
    _call(hooks, "on_train_start", state)

    def run_eval() -> None:
        scores = evaluate(model, data[monitor], task, spec.eval_batch_size, dev, with_loss=True)
        for m, v in scores.items():
            metric_rows.append(
                {
                    "run": spec.run,
                    "step": state.step,
                    "epoch": state.epoch,
                    "lr": math.nan,
                    "loss": math.nan,
                    "split": monitor,
                    "metric": m,
                    "value": float(v),
                }
            )
        value = scores[task.metric]
        if spec.keep_best and (best["score"] is None or value > best["score"]):
            best.update(
                score=float(value),
                step=state.step,
                state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            )
        log.info("run %s: step %d %s %s %.4f", spec.run, state.step, monitor, task.metric, value)
        _call(hooks, "on_evaluate", state, monitor, scores)

    def checkpoint() -> None:
        _save_checkpoint(
            ckpt_dir,
            {
                "format": CKPT_FORMAT,
                "spec": spec.to_dict(),
                "step": state.step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(dev),
                "rows": metric_rows,
                "best": best,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],
                "hooks_names": _hook_names(hooks),
                "inputs": inputs,
            },
        )

    bar = _progress(total, state.step, spec.run)
    n_train = len(train_split)
    first_epoch, offset = divmod(state.step, spe)
    for epoch in range(first_epoch, math.ceil(total / spe)):
        order = epoch_order(n_train, spec.seed, epoch).tolist()
        start = offset if epoch == first_epoch else 0
        for b in range(start, spe):
            if state.step >= total:
                break
            batch = train_split.batch(order[b * spec.batch_size : (b + 1) * spec.batch_size], dev)
            lr = float(scheduler.get_last_lr()[0])
            with autocast(dev, spec.precision):
                out = model(
                    batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
                )
            loss = loss_fn(out.logits, batch["labels"], task.regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, spec.grad_clip)
            optimizer.step()
            scheduler.step()

            state.step += 1
            state.epoch = state.step / spe
            state.loss = float(loss.detach())
            state.lr = lr
            metric_rows.append(
                {
                    "run": spec.run,
                    "step": state.step,
                    "epoch": state.epoch,
                    "lr": lr,
                    "loss": state.loss,
                    "split": None,
                    "metric": None,
                    "value": math.nan,
                }
            )
            bar.update(1)
            _call(hooks, "on_step_end", state)

            epoch_end = b == spe - 1
            if (
                epoch_end
                or state.step == total
                or (spec.eval_every > 0 and state.step % spec.eval_every == 0)
            ):
                run_eval()
            if state.step < total and (
                epoch_end or (spec.checkpoint_every > 0 and state.step % spec.checkpoint_every == 0)
            ):
                checkpoint()
    bar.close()

    if spec.keep_best and best["state"] is not None:
        model.load_state_dict(best["state"])
        log.info("run %s: keeping the weights of step %d (best valid)", spec.run, best["step"])

    # Final evaluations of the weights we end with.
    state.final = True
    results: dict[str, Any] = {}
    eval_rows = []
    for name in ("valid", "test"):
        if name not in data:
            continue
        scores = evaluate(model, data[name], task, spec.eval_batch_size, dev)
        results[name] = scores
        eval_rows += [
            {"run": spec.run, "task": task.name, "split": name, "metric": m, "value": float(v)}
            for m, v in scores.items()
        ]
        _call(hooks, "on_evaluate", state, name, scores)
    _call(hooks, "on_train_end", state)

    meta = {
        "run": spec.run,
        "spec_hash": stable_hash(spec.to_dict()),
        "version": __version__,
        "git_commit": git_commit(),
    }
    model.save(out_dir / "model", run=spec.run, steps=state.step, best_step=best["step"])
    write_parquet(pd.DataFrame(eval_rows, columns=EVAL_COLUMNS), out_dir / "eval.parquet", meta)
    write_parquet(metrics_frame(metric_rows), out_dir / "metrics.parquet", meta)
    write_yaml(spec.to_dict(), out_dir / "spec.yaml")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info(
        "run %s: done in %.1fs; %s %s %.4f%s",
        spec.run,
        time.time() - t0,
        monitor,
        task.metric,
        results[monitor][task.metric],
        f", test {results['test'][task.metric]:.4f}"
        if "test" in results and monitor != "test"
        else "",
    )
    results.update(steps=state.step, best_step=best["step"], resumed_from=resumed_from)
    return results


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-step and eval rows with fixed dtypes (strings stay object with None for step rows)."""
    df = pd.DataFrame(rows, columns=METRICS_COLUMNS)
    return df.astype(
        {
            "step": "int64",
            "epoch": "float64",
            "lr": "float64",
            "loss": "float64",
            "value": "float64",
        }
    )
