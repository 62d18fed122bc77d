"""Process-group helpers that degrade to no-ops in a single process (no process group)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, in rank order. No gradient flows back."""
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def broadcast_tensor(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_dist():
        dist.broadcast(x, src=src)
    return x


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every process `src`'s buffers (BN running statistics): after a training step in train mode each rank
    has updated its own, and an exact validation must run the same model (the one rank 0 saves) everywhere."""
    if is_dist():
        for buf in unwrap(model).buffers():
            dist.broadcast(buf, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from `src` to every process and return it."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, reproducible: bool, **kwargs: Any) -> nn.Module:
    """DistributedDataParallel on `device`. `reproducible` (a seeded run of more than 2 processes): keep DDP's
    first gradient buckets for the whole run, so that a process resumed mid-run sums every gradient in the order an
    uninterrupted one does.

    DDP re-buckets the gradients once, after the first iteration of each process, in the order backward produced
    them. The all-reduce's rounding depends on where a value sits in its bucket once there are more than 2 terms
    (a + b is exact in any order), so a run resumed at iteration s reduced iteration s in the first-iteration
    buckets, the uninterrupted run in the rebuilt ones, and the two drifted apart from the last bits (measured with
    4 processes). `find_unused_parameters` is what stops the re-bucketing; it costs one traversal of the autograd
    graph per step, and torch warns about it once per process.
    """
    keep_buckets = reproducible and get_world_size() > 2
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=keep_buckets, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model
