"""Stop signals and their exit codes, and the handler an entry script installs first, before its slow imports.

Until the training loop installs its own handler (clsa.faults.StopRequest, which checkpoints first), a stop signal
ends the process at once with the documented code and one line on stderr: nothing has been written yet, so nothing
is lost. Standard library only, so that it costs nothing before `import torch`.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # what SLURM sends before preemption, and Ctrl-C
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: rerun (with --resume auto once a checkpoint exists)
EXIT_INTERRUPTED = 130  # SIGINT: stopped as the user asked


def exit_code(signum: int) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


def exit_on_stop_signals(prog: str, when: str = "before training started", speak: bool | None = None) -> None:
    """Make SIGTERM/SIGUSR1 exit 75 and SIGINT exit 130 right away, saying that there is nothing to save (`when`:
    where the run was). The line is printed where `speak` (None: by torchrun's rank 0 or a process outside torchrun)."""
    if speak is None:
        speak = os.environ.get("RANK", "0") == "0"

    def stop(signum: int, frame: FrameType | None) -> None:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - a print the signal interrupted: its line may be lost, the exit is not
            pass
        if speak:
            name = signal.Signals(signum).name
            os.write(2, f"{prog}: {name} {when}: nothing to save; rerun the same command "
                        f"(exit code {exit_code(signum)})\n".encode())
        os._exit(exit_code(signum))  # no interpreter teardown in the middle of an import

    for s in STOP_SIGNALS:
        signal.signal(s, stop)
