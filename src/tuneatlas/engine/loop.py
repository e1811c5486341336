"""The one training loop: every training of every study goes through `fit(recipe, ...)`.

One flat loop (no Trainer): seeded model build, per-epoch shuffling from a generator seeded by
(seed, epoch), gradient accumulation over micro-batches, AdamW + schedule from the spec,
gradient clipping, precision (bf16 autocast and TF32 on CUDA when asked), evaluation at epoch
ends (and every `eval_every` steps) of the recipe's monitored split (none for a recipe whose
`monitor` is None), optional keep-best, per-step metrics, hooks (`tuneatlas.engine.hooks`), a
tqdm bar, resumable checkpoints (`tuneatlas.engine.checkpoint`), and DDP when
`torch.distributed` is initialised (torchrun): each rank takes its share of every global batch,
rank 0 writes. The recipe (`tuneatlas.engine.recipes`) says what differs: model, batches, loss,
evaluation, outputs. On CPU a fixed spec gives bit-identical metrics, and a run killed at any
point and started again ends with exactly the metrics of an uninterrupted run: the data order
of an epoch is a pure function of (seed, epoch) and the checkpoint holds the rest.
A SIGTERM makes the loop save a checkpoint after the current step and raise
`tuneatlas.errors.Preempted` (the CLI exits with status 75, and a rerun resumes).

Outputs in `out_dir`: `metrics.parquet`, `spec.yaml` and the recipe's (`model/`,
`eval.parquet`, ...); all written atomically after training, and `ckpt/` is removed once they
exist.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tuneatlas.engine.checkpoint import (
    CKPT_DIR,
    CheckpointPolicy,
    StopOnSigterm,
    hook_names,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tuneatlas.engine.device import rank_and_world, resolve_device, seed_everything, set_tf32
from tuneatlas.engine.hooks import call_hooks
from tuneatlas.engine.optim import AdamW, make_scheduler
from tuneatlas.engine.recipes import Recipe
from tuneatlas.errors import Preempted
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


def plan_steps(spec: Any, n_train: int, budget_rows: int | None = None) -> tuple[int, int]:
    """(steps per epoch, total steps): ceil(n / batch) per epoch, `epochs` of them, capped.
    With `budget_rows` the total is that of `epochs` over that many rows (an S5 cluster member
    trains as many steps as a model of the full training split)."""
    spe = math.ceil(n_train / spec.batch_size)
    total = math.ceil(spec.epochs * math.ceil((budget_rows or n_train) / spec.batch_size) - 1e-9)
    if spec.max_steps is not None:
        total = min(total, int(spec.max_steps))
    if total <= 0:
        raise ValueError(
            f"run {spec.run}: no training steps (epochs={spec.epochs}, max_steps={spec.max_steps})"
        )
    return spe, total


def micro_batches(rows: list[int], rank: int, world: int, micro: int | None) -> list[list[int]]:
    """This rank's share of one global batch (rows rank, rank + world, ...), cut into
    micro-batches of at most `micro` rows (None: one micro-batch); `[[]]` when a short last
    batch has fewer rows than there are ranks and none is left for this one."""
    mine = rows[rank::world]
    size = micro or max(1, len(mine))
    return [mine[i : i + size] for i in range(0, len(mine), size)] or [[]]


def compile_for_training(fn: Any, device: torch.device) -> Any:
    """`torch.compile` (Inductor) of the training loss or model; evaluation and checkpoints use
    the eager module, which holds the same parameters. Inductor's CPU kernels need a C++ compiler
    (CUDA's are Triton's): without one, say so now rather than at the first step."""
    compilers = (os.environ.get("CXX", "g++"), "c++")
    if device.type == "cpu" and not any(shutil.which(c) for c in compilers):
        raise RuntimeError(
            "compile: true needs a C++ compiler for torch.compile's CPU kernels (g++ or c++ on"
            " PATH, or CXX); install one or set the pre-training setting compile: false"
        )
    # Static shapes: an epoch's short last batch then gets its own graph, compiled once,
    # instead of Dynamo recompiling everything for a dynamic batch size at the first epoch end
    # (one 10-step chunk of the toy benchmark took 76 s there) and running every later step
    # with the dynamic-shape kernels.
    return torch.compile(fn, dynamic=False)


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


def fit(
    recipe: Recipe,
    out_dir: str | Path,
    hooks: Sequence[Any] = (),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train with `recipe`; returns {split: final scores, "steps": int, "best_step": int | None,
    "resumed_from": int}."""
    run = _Run(recipe, Path(out_dir), list(hooks), resolve_device(device))
    resumed_from = run.resume()
    run.announce()
    run.train()
    results = run.finish()
    results.update(steps=run.state.step, best_step=run.best["step"], resumed_from=resumed_from)
    return results


class _Run:
    """One run of `fit`: the set-up (here), then the steps `fit` calls in order: resume,
    announce, train (each optimiser step, evaluation and checkpoint), finish."""

    def __init__(
        self, recipe: Recipe, out_dir: Path, hooks: list[Any], device: torch.device
    ) -> None:
        spec = self.spec = recipe.spec
        self.recipe, self.hooks, self.t0 = recipe, hooks, time.time()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = out_dir / CKPT_DIR
        set_tf32(device, spec.tf32)
        rank, world = rank_and_world()
        self.policy = CheckpointPolicy.parse(spec.checkpoint_every)

        seed_everything(spec.seed)
        model, data = recipe.build()
        rows = subsample_rows(len(data["train"]), spec.max_train_samples, spec.seed)
        if rows is not None:
            data["train"] = data["train"].subset(rows)
        spe, total = plan_steps(spec, len(data["train"]), recipe.budget_rows)

        model.to(device)
        model.train()
        self.trained = model  # what the loss sees: the model, or its DDP wrapper
        if world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.loss = recipe.loss
        if getattr(spec, "compile", False):  # a setting of the specs that have it (S4's)
            if world > 1:  # Dynamo compiles a DDP module itself (bucket by bucket)
                self.trained = compile_for_training(self.trained, device)
            else:
                # the loss with the model in it: the logits' cross-entropy joins the graph
                # (7% of a compiled toy step's forward + backward, measured)
                self.loss = compile_for_training(recipe.loss, device)
        o = spec.optim
        optimizer = AdamW(
            recipe.param_groups(model, o.weight_decay),
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
            correct_bias=o.correct_bias,
        )
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.state = TrainState(
            spec=spec,
            recipe=recipe,
            out_dir=out_dir,
            device=device,
            data=data,
            model=model,
            optimizer=optimizer,
            scheduler=make_scheduler(optimizer, spec.schedule, spe, total),
            steps_per_epoch=spe,
            total_steps=total,
            rank=rank,
            world_size=world,
        )
        self.metric_rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "step": None, "state": None}
        self.inputs = recipe.inputs_fingerprint()

    def resume(self) -> int:
        """Restore the state of this run's checkpoint, if there is one; returns its step."""
        s = self.state
        ckpt = load_checkpoint(
            self.ckpt_dir, self.recipe.name, self.spec.to_dict(), self.hooks, self.inputs
        )
        if ckpt is None:
            return 0
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        self.metric_rows = list(ckpt["rows"])
        self.best = dict(ckpt["best"])
        for hook, hook_state in zip(self.hooks, ckpt["hooks"], strict=True):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        set_rng_state(ckpt["rng"], s.device)
        s.step = int(ckpt["step"])
        s.epoch = s.step / s.steps_per_epoch
        log.info(
            "run %s: resuming from checkpoint at step %d/%d", self.spec.run, s.step, s.total_steps
        )
        return s.step

    def announce(self) -> None:
        s = self.state
        log.info(
            "run %s: recipe %s, %s, %d steps (%d per epoch), %d trainable params, device %s%s",
            self.spec.run,
            self.recipe.name,
            self.recipe.describe(s.data),
            s.total_steps,
            s.steps_per_epoch,
            sum(p.numel() for p in self.trainable),
            s.device,
            f", {s.world_size} processes" if s.world_size > 1 else "",
        )
        call_hooks(self.hooks, "on_train_start", s)

    def train(self) -> None:
        """The epochs from the current step on: steps, evaluations and checkpoints when due."""
        s, spec = self.state, self.spec
        spe, n_train = s.steps_per_epoch, len(s.data["train"])
        bar = _progress(s.total_steps, s.step, spec.run, s.is_main)
        self.policy.start()
        first_epoch, offset = divmod(s.step, spe)
        with StopOnSigterm() as stop:
            for epoch in range(first_epoch, math.ceil(s.total_steps / spe)):
                order = epoch_order(n_train, spec.seed, epoch).tolist()
                for b in range(offset if epoch == first_epoch else 0, spe):
                    if s.step >= s.total_steps:
                        break
                    s.lr = float(s.scheduler.get_last_lr()[0])
                    s.loss = self.train_step(order[b * spec.batch_size : (b + 1) * spec.batch_size])
                    s.step += 1
                    s.epoch = s.step / spe
                    self.metric_rows.append(self._row(s.lr, s.loss, None, None, math.nan))
                    bar.update(1)
                    bar.set_postfix(loss=f"{s.loss:.4f}", refresh=False)
                    call_hooks(self.hooks, "on_step_end", s)
                    epoch_end = b == spe - 1
                    if self._evaluation_due(epoch_end):
                        self.evaluate()
                    saved = s.step < s.total_steps and self.policy.due(s.step, epoch_end)
                    if saved:
                        self.checkpoint()
                    if s.step < s.total_steps and self._stop_requested(stop):
                        bar.close()
                        self._stop(saved)
        bar.close()

    def _stop_requested(self, stop: StopOnSigterm) -> bool:
        """Whether SIGTERM arrived; under DDP whether it arrived on any rank, so that every
        rank stops after the same step."""
        if self.state.world_size == 1:
            return stop.requested
        flag = torch.tensor([float(stop.requested)], device=self.state.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _stop(self, saved: bool) -> None:
        """Preemption: the checkpoint of the current step (the state after the step, its
        evaluation and hooks: exactly what a periodic one holds), then `Preempted`."""
        s = self.state
        if not saved:
            self.checkpoint()
        if s.world_size > 1:
            torch.distributed.barrier()  # no rank exits (and gets torchrun to kill rank 0) early
        log.warning(
            "run %s: SIGTERM: checkpoint saved at step %d/%d; the same command resumes from it",
            self.spec.run,
            s.step,
            s.total_steps,
        )
        raise Preempted(self.spec.run, s.step, s.total_steps)

    def train_step(self, rows: list[int]) -> float:
        """One optimiser step on the global batch `rows`; returns its mean loss."""
        s, spec, world = self.state, self.spec, self.state.world_size
        parts = micro_batches(rows, s.rank, world, spec.micro_batch_size)
        s.optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for i, part in enumerate(parts):
            # Each part's mean weighted by its share of the global batch: the summed gradient
            # is the global batch's mean (DDP averages over ranks, hence x world).
            weight = len(part) * world / len(rows)
            if not part:
                # A short last batch left this rank no row (fewer rows than ranks): it still
                # runs forward/backward, on the batch's first row with weight 0, so that every
                # rank joins DDP's gradient all-reduce; the step is the one process's step.
                part = rows[:1]
            loss = self.loss(self.trained, s.data["train"].batch(part, s.device))
            if len(parts) > 1 or world > 1:
                loss = loss * weight
            if world > 1 and i < len(parts) - 1:
                with self.trained.no_sync():
                    loss.backward()
            else:
                loss.backward()
            total_loss += float(loss.detach())
        if world > 1:
            t = torch.tensor([total_loss / world], device=s.device)
            torch.distributed.all_reduce(t)
            total_loss = float(t)
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, spec.grad_clip)
        s.optimizer.step()
        s.scheduler.step()
        return total_loss

    def _evaluation_due(self, epoch_end: bool) -> bool:
        s, every = self.state, self.spec.eval_every
        if self.recipe.monitor is None:
            return False
        return epoch_end or s.step == s.total_steps or (every > 0 and s.step % every == 0)

    def evaluate(self) -> None:
        """Score the monitored split; record it, and the weights when they are the best yet."""
        s, recipe, split = self.state, self.recipe, self.recipe.monitor
        scores = recipe.evaluate(s.model, s.data, split, s.device, with_loss=True)
        for metric, value in scores.items():
            self.metric_rows.append(self._row(math.nan, math.nan, split, metric, float(value)))
        value = scores[recipe.metric]
        if self.spec.keep_best and (self.best["score"] is None or value > self.best["score"]):
            self.best.update(
                score=float(value),
                step=s.step,
                state={k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()},
            )
        log.info("run %s: step %d %s %s %.4f", self.spec.run, s.step, split, recipe.metric, value)
        call_hooks(self.hooks, "on_evaluate", s, split, scores)

    def _row(self, lr: float, loss: float, split: str | None, metric: str | None, value: float):
        s = self.state
        return {
            "run": self.spec.run,
            "step": s.step,
            "epoch": s.epoch,
            "lr": lr,
            "loss": loss,
            "split": split,
            "metric": metric,
            "value": value,
        }

    def checkpoint(self) -> None:
        s = self.state
        if not s.is_main:
            return
        save_checkpoint(
            self.ckpt_dir,
            {
                "recipe": self.recipe.name,
                "spec": self.spec.to_dict(),
                "step": s.step,
                "model": s.model.state_dict(),
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                "rng": rng_state(s.device),
                "rows": self.metric_rows,
                "best": self.best,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks],
                "hooks_names": hook_names(self.hooks),
                "inputs": self.inputs,
            },
        )

    def finish(self) -> dict[str, Any]:
        """Keep-best, the final evaluations, the outputs (rank 0); returns the final scores."""
        s, recipe, spec = self.state, self.recipe, self.spec
        if spec.keep_best and self.best["state"] is not None:
            s.model.load_state_dict(self.best["state"])
            log.info(
                "run %s: keeping the weights of step %d (best valid)", spec.run, self.best["step"]
            )
        s.final = True
        results: dict[str, Any] = {}
        for name in recipe.final_splits:
            results[name] = recipe.evaluate(s.model, s.data, name, s.device, with_loss=False)
            call_hooks(self.hooks, "on_evaluate", s, name, results[name])
        call_hooks(self.hooks, "on_train_end", s)
        if s.is_main:
            out_dir = s.out_dir
            write_parquet(
                metrics_frame(self.metric_rows), out_dir / "metrics.parquet", recipe.meta()
            )
            write_yaml(spec.to_dict(), out_dir / "spec.yaml")
            recipe.save(
                s.model,
                out_dir,
                results,
                steps=s.step,
                best_step=self.best["step"],
                best_score=self.best["score"],
            )
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self._log_done(results)
        return results

    def _log_done(self, results: dict[str, Any]) -> None:
        recipe, took = self.recipe, time.time() - self.t0
        if recipe.monitor is None:
            log.info("run %s: done in %.1fs; loss %.4f", self.spec.run, took, self.state.loss)
            return
        log.info(
            "run %s: done in %.1fs; %s %s %.4f%s",
            self.spec.run,
            took,
            recipe.monitor,
            recipe.metric,
            results.get(recipe.monitor, {}).get(recipe.metric, math.nan),
            f", test {results['test'][recipe.metric]:.4f}"
            if "test" in results and recipe.monitor != "test"
            else "",
        )


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
