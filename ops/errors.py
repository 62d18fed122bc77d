"""One clear line and exit code 2 for bad input, instead of a traceback from deep in torch."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


class UsageError(ValueError):
    """Bad flag, file or folder. The message names it and says what would be valid."""


class FileProblem(UsageError):
    """A file the library cannot use: str() is the quoted `path` and the `problem`, naming no flag; the entry script
    that took the path from a flag puts the flag in front (ops.argparser.naming_flag). `not_plain_data`: refused
    only because weights-only loading would not open it; `earlier_format`: for the numpy objects of this project's
    earlier checkpoints."""

    def __init__(self, path: str, problem: str, not_plain_data: bool = False, earlier_format: bool = False):
        self.path, self.problem = path, problem
        self.not_plain_data, self.earlier_format = not_plain_data, earlier_format
        super().__init__(f"{path!r} {problem}")


def exit_usage(prog: str, err: UsageError | str) -> NoReturn:
    """Print `prog: error: <message>` once (rank 0 only under torchrun) and exit with code 2."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2)
