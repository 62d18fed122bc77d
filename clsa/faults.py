"""Stopping cleanly: preemption signals, non-finite losses, agreement between processes.

SIGTERM / SIGUSR1 (what SLURM sends before preemption) and SIGINT set a flag. At the end of each iteration every
process learns (one all_reduce) whether any process was signalled or produced a non-finite loss, so all of them take
the same decision at the same iteration.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch

from clsa.distributed import is_dist
from ops.stop_signals import EXIT_PREEMPTED, STOP_SIGNALS, exit_code

EXIT_NONFINITE = 3  # the loss became NaN/inf; the last good checkpoint is kept


class StopRequest:
    """Records the first stop signal received by this process."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    @classmethod
    def installed(cls) -> StopRequest:
        """The StopRequest this process already handles stop signals with (a signal it recorded is kept), else a new
        one, installed."""
        owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        return owner if isinstance(owner, cls) else cls().install()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def exit_code(self) -> int:
        """75 (preempted: checkpoint written, rerun with --resume auto) or 130 (SIGINT: checkpoint written)."""
        return exit_code(self.signum) if self.signum is not None else EXIT_PREEMPTED

    @property
    def name(self) -> str:
        """The signal's name; on a process that stops because another one was signalled (agree_to_stop), says so."""
        return signal.Signals(self.signum).name if self.signum is not None else "stop signal on another process"


def agreed_flags(stop_requested: bool, loss: torch.Tensor) -> torch.Tensor:
    """[some process asked to stop, some process's `loss` is not finite] (1.0 = yes) on the loss's device, agreed by
    one all_reduce (MAX) when distributed. Nothing here waits for the device (NCCL queues the all_reduce)."""
    bad = (~torch.isfinite(loss.detach())).float()
    flags = torch.stack([torch.zeros_like(bad) + float(stop_requested), bad])  # no host-to-device copy
    if is_dist():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


def agree_to_stop(stop_requested: bool, device: torch.device) -> bool:
    """Whether any process asked to stop (one all_reduce when distributed; waits for it)."""
    if not is_dist():
        return stop_requested
    return bool(agreed_flags(stop_requested, torch.zeros((), device=device))[0] > 0)
