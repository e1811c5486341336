"""Where a run computes: the device, seeding, the TF32 switch, and the distributed process group
(torchrun) with this process's rank and world size."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


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


def set_tf32(device: torch.device, enabled: bool) -> None:
    # Set both ways on every run: a process that trained with tf32 must not leak it into the
    # next run's fp32 matmuls.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a process group is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_group(device: str | None) -> Iterator[str | torch.device | None]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on CPU) and
    yield this rank's GPU; otherwise yield `device` unchanged (one process)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield device
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield dev
    finally:
        dist.destroy_process_group()
