"""What the pretraining loop learns about each iteration without making the host wait for the device.

`StepFlags`: every iteration's agreement of all processes on (a process asked to stop, every loss is finite), one
all_reduce. With `lag` 1 the host reads iteration i's agreement during iteration i + 1, from a pinned copy that
finished long before, and the update of iteration i is kept or undone on the device (`CLSAStep.update(only_if=)`);
with `lag` 0 it waits for it before the update (the CPU default: nothing to overlap there).
`DeviceMeans`: running means of the step statistics, summed on the device and read only when printed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clsa.distributed import is_dist


@dataclass(frozen=True)
class Agreement:
    iteration: int
    stop: bool  # some process asked to stop (a stop signal)
    finite: bool  # every process's loss was finite


class StepFlags:
    """push(iteration, stop_requested, loss) -> finite (bool tensor on the loss's device, the same on every process);
    pop() -> the oldest pushed iteration's Agreement once `lag` newer ones were pushed, else None; flush() -> the rest.
    """

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.pending: deque[tuple[int, torch.Tensor, torch.cuda.Event | None]] = deque()

    def push(self, iteration: int, stop_requested: bool, loss: torch.Tensor) -> torch.Tensor:
        bad = (~torch.isfinite(loss.detach())).float()
        flags = torch.stack([torch.zeros_like(bad) + float(stop_requested), bad])  # no host-to-device copy
        if is_dist():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # NCCL: queued on the device, the host goes on
        if flags.is_cuda and self.lag > 0:
            host = torch.empty(2, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append((iteration, host, event))
        else:
            self.pending.append((iteration, flags, None))
        return flags[1] == 0

    def pop(self) -> Agreement | None:
        if len(self.pending) <= self.lag:
            return None
        iteration, flags, event = self.pending.popleft()
        if event is not None:
            event.synchronize()
        stop, bad = flags.tolist()
        return Agreement(iteration, stop > 0, bad == 0)

    def flush(self) -> list[Agreement]:
        lag, self.lag = self.lag, 0
        out = list(iter(self.pop, None))
        self.lag = lag
        return out


class DeviceMeans:
    """Per name, the last value and the running mean weighted by images, kept on the device."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.sums: torch.Tensor | None = None
        self.count: torch.Tensor | float = 0.0
        self.last: torch.Tensor | None = None

    def update(self, values: list[torch.Tensor], n: int, keep: torch.Tensor | None = None) -> None:
        """Add one iteration's values (0-d tensors) for `n` images; `keep` false: the iteration does not count."""
        v = torch.stack([x.detach().float() for x in values])
        weight = torch.full_like(v[:1], float(n)) if keep is None else keep.float().reshape(1) * n
        add = torch.where(weight > 0, v, torch.zeros_like(v)) * weight
        self.sums = add if self.sums is None else self.sums + add
        self.count = self.count + weight
        self.last = v

    def read(self) -> tuple[dict[str, float], dict[str, float]]:
        """(last values, means): one host synchronisation."""
        if self.sums is None:
            zeros = dict.fromkeys(self.names, 0.0)
            return zeros, dict(zeros)
        values = torch.cat([self.last, self.sums, torch.as_tensor(self.count).reshape(1)]).tolist()
        k = len(self.names)
        last, sums, count = values[:k], values[k:2 * k], max(values[2 * k], 1e-12)
        return dict(zip(self.names, last, strict=True)), {m: s / count for m, s in zip(self.names, sums, strict=True)}
