"""Rank-0 logging: console, a text log in the run directory, TensorBoard scalars (tensorboardX)."""

from __future__ import annotations

import os
import time
from typing import Any

from ops.atomic import write_json


class AverageMeter:
    """Current value and running average, printed as `name val (avg)`."""

    def __init__(self, name: str, fmt: str = ":f") -> None:
        self.name, self.fmt = name, fmt
        self.reset()

    def reset(self) -> None:
        self.val, self.sum, self.count = 0.0, 0.0, 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)

    def __str__(self) -> str:
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(name=self.name, val=self.val,
                                                                          avg=self.avg)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def progress_line(prefix: str, i: int, n: int, meters: list[AverageMeter], extra: str = "") -> str:
    """The 2021 line: `Epoch: [e][ i/N]` then tab-separated meters."""
    width = len(str(n))
    line = f"{prefix}[{i:>{width}}/{n}]\t" + "\t".join(str(m) for m in meters)
    return line + ("\t" + extra if extra else "")


class RunLogger:
    """Prints and writes only on the main process; other ranks get a silent logger."""

    def __init__(self, run_dir: str | None, enabled: bool, log_name: str = "train.log", tensorboard: bool = True):
        self.enabled = enabled and run_dir is not None
        self.run_dir = run_dir
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(run_dir, exist_ok=True)
            self._file = open(os.path.join(run_dir, log_name), "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(log_dir=run_dir)

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        self._file.write(msg + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            write_json(os.path.join(self.run_dir, name), obj, sort_keys=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        self._tb = self._file = None


def unique_run_dir(base: str) -> str:
    """Create and return `base`, or `base-1`, `base-2`, ... when runs started in the same second share a stamp."""
    path, i = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            path, i = f"{base}-{i}", i + 1


def timestamp() -> str:
    """Colon-free run stamp `yymmdd-HHMMSS`."""
    return time.strftime("%y%m%d-%H%M%S")
