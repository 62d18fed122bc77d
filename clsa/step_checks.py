"""What the pretraining loop learns about each iteration without making the host wait for the device.

`StepFlags`: every iteration's agreement of all processes on (a process asked to stop, every loss is finite), one
all_reduce. With `lag` 0 the host reads iteration i's agreement before its update (the CPU default: nothing to
overlap there). With `lag` 1 (`--step_checks deferred`) it reads iteration i - 1's during iteration i, from a pinned
copy that finished long before, and every update is applied through `guarded_step` / `dequeue_and_enqueue(only_if=)`,
which keep it or undo it on the device.
`DeviceMeans`: running means of the step statistics, summed on the device and read only when printed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from clsa.faults import agreed_flags


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
        flags = agreed_flags(stop_requested, loss)
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
        return self._read(self.pending.popleft()) if len(self.pending) > self.lag else None

    def flush(self) -> list[Agreement]:
        out = [self._read(entry) for entry in self.pending]
        self.pending.clear()
        return out

    @staticmethod
    def _read(entry: tuple[int, torch.Tensor, torch.cuda.Event | None]) -> Agreement:
        iteration, flags, event = entry
        if event is not None:
            event.synchronize()
        stop, bad = flags.tolist()
        return Agreement(iteration, stop > 0, bad == 0)


class DeviceMeans:
    """Per name, the last value and the running mean weighted by images, kept on the device."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.last: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None  # per name the sum of value x images, then the number of images

    def update(self, values: list[torch.Tensor], n: int, keep: torch.Tensor | None = None) -> None:
        """Add one iteration's values (0-d tensors) for `n` images; `keep` false: the iteration does not count."""
        v = torch.stack([x.detach().float() for x in values])
        weight = torch.full_like(v[:1], float(n)) if keep is None else keep.float().reshape(1) * n
        add = torch.cat([torch.where(weight > 0, v, torch.zeros_like(v)) * weight, weight])
        self.sums = add if self.sums is None else self.sums + add
        self.last = v

    def read(self) -> tuple[dict[str, float], dict[str, float]]:
        """(last values, means): one host synchronisation."""
        if self.sums is None:
            zeros = dict.fromkeys(self.names, 0.0)
            return zeros, dict(zeros)
        values = torch.cat([self.last, self.sums]).tolist()
        k = len(self.names)
        last, sums, count = values[:k], values[k:2 * k], max(values[2 * k], 1e-12)
        return dict(zip(self.names, last, strict=True)), {m: s / count for m, s in zip(self.names, sums, strict=True)}


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
