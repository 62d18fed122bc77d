"""The CLSA training step: which views exist, the objective over them, the update and the enqueue.

The flags that define the method are read once into `MethodConfig`; `CLSAStep` then owns, per iteration:
split [key, weak..., strong...] -> forward (clsa/builder.py) -> InfoNCE over the weak views at temperature T plus
alpha x DDM of the strong views against the weak ones at T2 (clsa/losses.py), a second pass with the roles of key
and weak view 0 swapped under --sym 1 -> backward, SGD step -> enqueue the keys (after backward: the loss read the
queue without a copy). alpha 0 is MoCo v2: no strong view is built or forwarded.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from clsa.distributed import unwrap
from clsa.losses import clsa_loss, strong_infonce_loss


@dataclass(frozen=True)
class MethodConfig:
    """T (`--moco_t`), T2 (`--clsa_t`), alpha, --sym, the picked crops, bf16 autocast (`--amp`) and what the
    strong views are trained with (`--strong_loss`: "ddm", CLSA; "infonce", the ablation)."""
    moco_t: float
    clsa_t: float
    alpha: float
    sym: bool
    pick_weak: tuple[int, ...]
    pick_strong: tuple[int, ...]
    amp: bool
    strong_loss: str = "ddm"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MethodConfig:
        # alpha 0 means MoCo v2: no strong views are computed at all.
        strong = tuple(args.pick_strong) if args.alpha != 0 else ()
        return cls(args.moco_t, args.clsa_t, args.alpha, bool(args.sym), tuple(args.pick_weak), strong,
                   bool(args.amp), getattr(args, "strong_loss", "ddm"))

    @property
    def num_weak(self) -> int:
        return len(self.pick_weak)

    @property
    def strong_label(self) -> str:
        """How progress lines name the strong-view term: DDM, or StrongNCE under --strong_loss infonce."""
        return "StrongNCE" if self.strong_loss == "infonce" else "DDM"

    def objective(self, weak: list[torch.Tensor], strong: list[torch.Tensor], keys: torch.Tensor,
                  queue: torch.Tensor, offset: int) -> tuple[torch.Tensor, dict]:
        """The loss of one set of keys: clsa_loss (DDM) or strong_infonce_loss, with this config's T, T2, alpha."""
        if self.strong_loss == "infonce":
            return strong_infonce_loss(weak, strong, keys, queue, offset, self.moco_t, self.alpha)
        return clsa_loss(weak, strong, keys, queue, offset, self.moco_t, self.clsa_t, self.alpha)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU and CUDA when `enabled`."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def split_views(views: list[torch.Tensor], num_weak: int
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """[key, weak..., strong...] -> (key, weak, strong)."""
    return views[0], list(views[1:1 + num_weak]), list(views[1 + num_weak:])


@dataclass
class StepOutput:
    loss: torch.Tensor
    stats: dict[str, float]
    keys: torch.Tensor  # this process's keys, enqueued after the update


class CLSAStep:
    """loss(model, views, offset) then update(model, optimizer, out): one CLSA iteration, split where the caller
    decides (non-finite check, stop agreement) whether the update happens."""

    def __init__(self, config: MethodConfig):
        self.config = config

    def loss(self, model: nn.Module, views: list[torch.Tensor], offset: int) -> StepOutput:
        """Forward all views and build the objective (both passes with --sym 1). `offset`: global rank x N, the
        row of this process's first positive among the gathered keys."""
        c = self.config
        key, weak, strong = split_views(views, c.num_weak)
        with autocast(key.device, c.amp):
            out = model(key, weak, strong)
        # No copy: the queue is only overwritten (dequeue_and_enqueue) after backward has used it.
        queue = unwrap(model).queue.detach()
        loss, stats = c.objective(out.weak, out.strong, out.keys, queue, offset)
        if not c.sym:
            return StepOutput(loss, stats, out.keys)
        # Pass 2: the other weak queries and the key-view query against k2 = encoder_k(weak view 0).
        loss2, stats2 = c.objective(out.weak[1:] + [out.key_query], out.strong, out.keys2, queue, offset)
        for name in ("infonce", "ddm", "n_infonce", "n_ddm"):
            stats[name] += stats2[name]
        return StepOutput(loss + loss2, stats, out.keys2)

    @staticmethod
    def update(model: nn.Module, optimizer: torch.optim.Optimizer, out: StepOutput,
               only_if: torch.Tensor | None = None) -> None:
        """Backward, SGD step, then enqueue this step's keys. `only_if` (a bool tensor, e.g. "every process's loss
        is finite"): decided on the device, without waiting for it; when false, the weights, the SGD momentum and
        the queue stay as they were (the update is computed, then undone)."""
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if only_if is None:
            optimizer.step()
        else:
            guarded_step(optimizer, only_if)
        unwrap(model).dequeue_and_enqueue(out.keys, only_if)


@torch.no_grad()
def guarded_step(optimizer: torch.optim.Optimizer, only_if: torch.Tensor) -> None:
    """optimizer.step(), kept only where `only_if` (a bool tensor) is true: parameters and SGD momentum buffers
    are otherwise put back. A buffer the step created is put back as zeros, which the next step turns into
    exactly the fresh buffer (m * 0 + g = g)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    old_params = [p.detach().clone() for p in params]
    old_bufs = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    old_bufs = [None if b is None else b.clone() for b in old_bufs]
    optimizer.step()
    for p, old, old_buf in zip(params, old_params, old_bufs, strict=True):
        p.copy_(torch.where(only_if, p, old))
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            buf.copy_(torch.where(only_if, buf, torch.zeros_like(buf) if old_buf is None else old_buf))
