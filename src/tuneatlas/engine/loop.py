"""The one training loop: every training of every study goes through `fit(recipe, ...)`.

One flat loop (no Trainer): seeded model build, per-epoch shuffling from a generator seeded by
(seed, epoch), gradient accumulation over micro-batches, AdamW + schedule from the spec,
gradient clipping, precision (bf16 autocast and TF32 on CUDA when asked), evaluation at epoch
ends (and every `eval_every` steps), optional keep-best, per-step metrics, hooks, a tqdm bar,
resumable checkpoints (`tuneatlas.engine.checkpoint`), and DDP when `torch.distributed` is
initialised (torchrun): each rank takes its share of every global batch, rank 0 writes.
The recipe (`tuneatlas.engine.recipes`) says what differs: model, batches, loss, evaluation,
outputs. On CPU a fixed spec gives bit-identical metrics, and a run killed at any point and
started again ends with exactly the metrics of an uninterrupted run: the data order of an epoch
is a pure function of (seed, epoch) and the checkpoint holds the rest.

Hooks (docs/internals.md): any object with some of `on_train_start(state)`,
`on_step_end(state)`, `on_evaluate(state, split, scores)`, `on_train_end(state)` and, for
resume, `state_dict()` / `load_state_dict(d)`. On resume `load_state_dict` is called before
`on_train_start`, which then sees `state.step > 0`. Hook state is stored with `torch.save`
and read back with `weights_only=True`: keep it to tensors, numbers, strings, lists, dicts.

Outputs in `out_dir`: the recipe's (`model/`, `eval.parquet`, ...), `metrics.parquet` and
`spec.yaml`; all written atomically after training, and `ckpt/` is removed once they exist.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneatlas.engine.checkpoint import (
    CKPT_DIR,
    CheckpointPolicy,
    hook_names,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tuneatlas.engine.optim import AdamW, make_scheduler
from tuneatlas.engine.recipes import Recipe
from tuneatlas.io import stable_hash, write_parquet, write_yaml

log = logging.getLogger(__name__)

METRICS_COLUMNS = ["run", "step", "epoch", "lr", "loss", "split", "metric", "value"]


@dataclass
class TrainState:
    """What hooks see. `epoch` is fractional: completed steps / steps per epoch."""

    spec: Any
    recipe: Recipe = field(repr=False)
    out_dir: Path
    device: torch.device
    data: dict[str, Any] = field(repr=False)
    model: torch.nn.Module = field(repr=False)  # the bare model, never the DDP wrapper
    optimizer: torch.optim.Optimizer = field(repr=False)
    scheduler: Any = field(repr=False)
    steps_per_epoch: int
    total_steps: int
    rank: int = 0
    world_size: int = 1
    step: int = 0
    epoch: float = 0.0
    loss: float = float("nan")
    lr: float = float("nan")
    final: bool = False  # True during the final evaluations after the loop

    @property
    def task(self) -> Any:
        return getattr(self.recipe, "task", None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _call(hooks: Sequence[Any], name: str, *args: Any) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto": CUDA when available, else CPU; anything else as torch names it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for, but CUDA is not available on this machine"
            f" (torch {torch.__version__}) (config key 'device', --device or TUNEATLAS_DEVICE):"
            " use device: auto or cpu, or run the job on a GPU node"
        )
    return dev


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


def plan_steps(spec: Any, n_train: int) -> tuple[int, int]:
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


def micro_batches(rows: list[int], rank: int, world: int, micro: int | None) -> list[list[int]]:
    """This rank's share of one global batch (rows rank, rank + world, ...), cut into
    micro-batches of at most `micro` rows (None: one micro-batch)."""
    mine = rows[rank::world]
    size = micro or max(1, len(mine))
    return [mine[i : i + size] for i in range(0, len(mine), size)] or [[]]


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
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
        disable=not enabled,
    )


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _set_tf32(device: torch.device, enabled: bool) -> None:
    # Set both ways on every run: a process that trained with tf32 must not leak it into the
    # next run's fp32 matmuls.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def fit(
    recipe: Recipe,
    out_dir: str | Path,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train with `recipe`; returns {split: final scores, "steps": int, "best_step": int | None,
    "resumed_from": int}."""
    spec = recipe.spec
    t0 = time.time()
    hooks = list(hooks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / CKPT_DIR
    dev = resolve_device(device)
    _set_tf32(dev, spec.tf32)
    rank, world = _distributed()
    policy = CheckpointPolicy.parse(spec.checkpoint_every)

    seed_everything(spec.seed)
    model, data = recipe.build()
    rows = subsample_rows(len(data["train"]), spec.max_train_samples, spec.seed)
    if rows is not None:
        data["train"] = data["train"].subset(rows)
    train_split = data["train"]
    spe, total = plan_steps(spec, len(train_split))

    model.to(dev)
    model.train()
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    o = spec.optim
    optimizer = AdamW(
        recipe.param_groups(model, o.weight_decay),
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
        recipe=recipe,
        out_dir=out_dir,
        device=dev,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=spe,
        total_steps=total,
        rank=rank,
        world_size=world,
    )
    metric_rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": None, "step": None, "state": None}

    inputs = recipe.inputs_fingerprint()
    ckpt = load_checkpoint(ckpt_dir, recipe.name, spec.to_dict(), hooks, inputs)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        metric_rows = list(ckpt["rows"])
        best = dict(ckpt["best"])
        for h, hs in zip(hooks, ckpt["hooks"], strict=True):
            if hs is not None:
                h.load_state_dict(hs)
        set_rng_state(ckpt["rng"], dev)
        state.step = int(ckpt["step"])
        state.epoch = state.step / spe
        log.info("run %s: resuming from checkpoint at step %d/%d", spec.run, state.step, total)
    resumed_from = state.step

    log.info(
        "run %s: recipe %s, %s, %d steps (%d per epoch), %d trainable params, device %s%s",
        spec.run,
        recipe.name,
        recipe.describe(data),
        total,
        spe,
        sum(p.numel() for p in trainable),
        dev,
        f", {world} processes" if world > 1 else "",
    )
    _call(hooks, "on_train_start", state)

    def run_eval() -> None:
        scores = recipe.evaluate(model, data, recipe.monitor, dev, with_loss=True)
        for m, v in scores.items():
            metric_rows.append(
                {
                    "run": spec.run,
                    "step": state.step,
                    "epoch": state.epoch,
                    "lr": math.nan,
                    "loss": math.nan,
                    "split": recipe.monitor,
                    "metric": m,
                    "value": float(v),
                }
            )
        value = scores[recipe.metric]
        if spec.keep_best and (best["score"] is None or value > best["score"]):
            best.update(
                score=float(value),
                step=state.step,
                state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            )
        log.info(
            "run %s: step %d %s %s %.4f", spec.run, state.step, recipe.monitor, recipe.metric, value
        )
        _call(hooks, "on_evaluate", state, recipe.monitor, scores)

    def checkpoint() -> None:
        if not state.is_main:
            return
        save_checkpoint(
            ckpt_dir,
            {
                "recipe": recipe.name,
                "spec": spec.to_dict(),
                "step": state.step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(dev),
                "rows": metric_rows,
                "best": best,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],
                "hooks_names": hook_names(hooks),
                "inputs": inputs,
            },
        )

    def train_step(rows: list[int]) -> float:
        """One optimiser step on the global batch `rows`; returns its mean loss."""
        parts = micro_batches(rows, rank, world, spec.micro_batch_size)
        optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for i, part in enumerate(parts):
            loss = recipe.loss(trained, train_split.batch(part, dev))
            if len(parts) > 1 or world > 1:
                # Each part's mean weighted by its share of the global batch: the summed
                # gradient is the global batch's mean (DDP averages over ranks, hence x world).
                loss = loss * (len(part) * world / len(rows))
            last = i == len(parts) - 1
            if world > 1 and not last:
                with trained.no_sync():
                    loss.backward()
            else:
                loss.backward()
            total_loss += float(loss.detach())
        if world > 1:
            t = torch.tensor([total_loss / world], device=dev)
            torch.distributed.all_reduce(t)
            total_loss = float(t)
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, spec.grad_clip)
        optimizer.step()
        scheduler.step()
        return total_loss

    bar = _progress(total, state.step, spec.run, state.is_main)
    policy.start()
    n_train = len(train_split)
    first_epoch, offset = divmod(state.step, spe)
    for epoch in range(first_epoch, math.ceil(total / spe)):
        order = epoch_order(n_train, spec.seed, epoch).tolist()
        start = offset if epoch == first_epoch else 0
        for b in range(start, spe):
            if state.step >= total:
                break
            lr = float(scheduler.get_last_lr()[0])
            loss = train_step(order[b * spec.batch_size : (b + 1) * spec.batch_size])
            state.step += 1
            state.epoch = state.step / spe
            state.loss = loss
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
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            _call(hooks, "on_step_end", state)

            epoch_end = b == spe - 1
            if (
                epoch_end
                or state.step == total
                or (spec.eval_every > 0 and state.step % spec.eval_every == 0)
            ):
                run_eval()
            if state.step < total and policy.due(state.step, epoch_end):
                checkpoint()
    bar.close()

    if spec.keep_best and best["state"] is not None:
        model.load_state_dict(best["state"])
        log.info("run %s: keeping the weights of step %d (best valid)", spec.run, best["step"])

    # Final evaluations of the weights we end with.
    state.final = True
    results: dict[str, Any] = {}
    for name in recipe.final_splits:
        results[name] = recipe.evaluate(model, data, name, dev, with_loss=False)
        _call(hooks, "on_evaluate", state, name, results[name])
    _call(hooks, "on_train_end", state)

    if state.is_main:
        recipe.save(model, out_dir, results, steps=state.step, best_step=best["step"])
        write_parquet(metrics_frame(metric_rows), out_dir / "metrics.parquet", recipe.meta())
        write_yaml(spec.to_dict(), out_dir / "spec.yaml")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    monitor = results.get(recipe.monitor, {})
    log.info(
        "run %s: done in %.1fs; %s %s %.4f%s",
        spec.run,
        time.time() - t0,
        recipe.monitor,
        recipe.metric,
        monitor.get(recipe.metric, math.nan),
        f", test {results['test'][recipe.metric]:.4f}"
        if "test" in results and recipe.monitor != "test"
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
