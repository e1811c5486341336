"""Optimiser and learning-rate schedules shared by every study.

`AdamW` re-implements the former `transformers.AdamW` class (removed from transformers), because
S2 needs its `correct_bias=False` option, which `torch.optim.AdamW` does not have. Its update:

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
    step_size = lr * sqrt(1 - b2^t) / (1 - b1^t)   if correct_bias else lr
    p -= step_size * m / (sqrt(v) + eps)
    p -= lr * wd * p                               (decoupled decay, after the update)

Note that eps is added to sqrt(v) *before* bias correction (as in that class), so with
`correct_bias=True` it differs from `torch.optim.AdamW` only at the scale of eps.

`make_scheduler` builds the studies' warm-up + decay schedules (docs/studies.md) as a `LambdaLR`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from tuneatlas.spec import ScheduleSpec


class AdamW(torch.optim.Optimizer):
    """AdamW with optional bias correction, exactly as the former `transformers.AdamW`.

    Defaults are that class's: lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight decay 0,
    bias correction on. `foreach=True` (default) updates all tensors of a parameter group with
    torch's multi-tensor kernels; `foreach=False` is the one-tensor-at-a-time reference, which
    gives bit-identical results on CPU (tests/unit/test_engine.py). `state["step"]` is a plain
    int, so `state_dict()` loads with `torch.load(weights_only=True)`.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        foreach: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"AdamW: invalid lr {lr} (must be >= 0)")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: invalid betas {betas} (each must be in [0, 1))")
        if eps < 0.0:
            raise ValueError(f"AdamW: invalid eps {eps} (must be >= 0)")
        if weight_decay < 0.0:
            raise ValueError(f"AdamW: invalid weight_decay {weight_decay} (must be >= 0)")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias
        )
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamW does not support sparse gradients")
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            if self.foreach:
                self._update_foreach(group, params)
            else:
                self._update_loop(group, params)
        return loss

    def _step_size(self, group: dict[str, Any], step: int) -> float:
        if not group["correct_bias"]:
            return group["lr"]
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)

    def _update_loop(self, group: dict[str, Any], params: list[torch.nn.Parameter]) -> None:
        """One tensor at a time: the reference the multi-tensor path is tested against."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            denom = exp_avg_sq.sqrt().add_(eps)
            p.addcdiv_(exp_avg, denom, value=-self._step_size(group, state["step"]))
            if wd > 0.0:
                # Decay applied to the already-updated weights, as the original class does.
                p.add_(p, alpha=-lr * wd)

    def _update_foreach(self, group: dict[str, Any], params: list[torch.nn.Parameter]) -> None:
        """The same arithmetic with torch's multi-tensor kernels: one launch per operation for
        all tensors of the group instead of one per tensor (the Python loop dominates for
        models with hundreds of small tensors, and on CUDA every launch costs)."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, eps)
        # Every tensor of a group shares its step count (they are created and stepped
        # together), so one step size serves all.
        steps = {self.state[p]["step"] for p in params}
        if len(steps) == 1:
            torch._foreach_addcdiv_(
                params, exp_avgs, denoms, value=-self._step_size(group, steps.pop())
            )
        else:
            sizes = [-self._step_size(group, self.state[p]["step"]) for p in params]
            torch._foreach_addcdiv_(params, exp_avgs, denoms, sizes)
        if wd > 0.0:
            torch._foreach_add_(params, params, alpha=-lr * wd)


def warmup_steps(spec: ScheduleSpec, steps_per_epoch: int) -> int:
    """Warm-up length in steps: the larger of `warmup_steps` and `warmup_epochs` of an epoch."""
    return max(int(spec.warmup_steps), round(spec.warmup_epochs * steps_per_epoch))


def lr_factor(spec: ScheduleSpec, step: int, warmup: int, total_steps: int) -> float:
    """Multiplier of the peak lr used for the update of (0-based) optimiser step `step`.

    Warm-up rises linearly from 0 at step 0 to 1 at step `warmup` (the Hugging Face
    convention, so the very first update of a warmed-up run has lr 0); afterwards "linear" and
    "cosine" fall to 0 at `total_steps`, "constant" stays at 1.
    """
    if step < warmup:
        return step / warmup
    if spec.name == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if spec.name == "linear":
        return max(0.0, 1.0 - progress)
    if spec.name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(
        f"unknown schedule name {spec.name!r}; use one of 'linear', 'constant', 'cosine'"
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    spec: ScheduleSpec,
    steps_per_epoch: int,
    total_steps: int,
) -> LambdaLR:
    """Per-step `LambdaLR` for `spec`; call `scheduler.step()` after every `optimizer.step()`."""
    if steps_per_epoch <= 0 or total_steps <= 0:
        raise ValueError(
            f"make_scheduler: steps_per_epoch ({steps_per_epoch}) and total_steps "
            f"({total_steps}) must be positive; is the training split empty?"
        )
    if spec.name not in ("linear", "constant", "cosine"):
        raise ValueError(
            f"unknown schedule name {spec.name!r}; use one of 'linear', 'constant', 'cosine'"
        )
    warmup = warmup_steps(spec, steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_factor(spec, step, warmup, total_steps))
