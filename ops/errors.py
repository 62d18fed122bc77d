"""One clear line and exit code 2 for bad input, instead of a traceback from deep in torch."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


class UsageError(ValueError):
    """Bad flag, file or folder. The message names it and says what would be valid."""


def exit_usage(prog: str, err: UsageError | str) -> NoReturn:
    """Print `prog: error: <message>` once (rank 0 only under torchrun) and exit with code 2."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2)
