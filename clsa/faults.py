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
from ops.environment import STOP_SIGNALS

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint written, rerun with --resume auto
EXIT_INTERRUPTED = 130  # SIGINT: checkpoint written, then stopped as the user asked
EXIT_NONFINITE = 3  # the loss became NaN/inf; the last good checkpoint is kept


class StopRequest:
    """Records the first stop signal received by this process."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED

    @property
    def name(self) -> str:
        """The signal's name; on a process that stops because another one was signalled (agree), says so."""
        return signal.Signals(self.signum).name if self.signum is not None else "stop signal on another process"


def agree(stop_requested: bool, loss_finite: bool, device: torch.device) -> tuple[bool, bool]:
    """(any process asked to stop, every process has a finite loss), using one all_reduce when distributed."""
    if not is_dist():
        return stop_requested, loss_finite
    flags = torch.tensor([float(stop_requested), float(not loss_finite)], device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return bool(flags[0] > 0), bool(flags[1] == 0)
