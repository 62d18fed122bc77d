"""Run `main_clsa.py` as a child process with its output streamed, under an optional wall-clock deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import IO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pretraining(argv: list[str], deadline: float | None = None, log: Callable[[str], None] = print,
                    env: dict | None = None, stdout: IO | None = None) -> dict:
    """Run `argv` from the repo root; at `deadline` (time.time() value) send SIGTERM, which makes main_clsa.py save
    a checkpoint and exit 75. Returns {returncode, seconds, stopped_at_deadline}."""
    start = time.time()
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env, stdout=stdout, stderr=subprocess.STDOUT if stdout
                            else None)
    stopped = False
    try:
        while proc.poll() is None:
            if deadline is not None and not stopped and time.time() > deadline:
                log("time budget reached: asking main_clsa.py to stop (it saves a checkpoint first)")
                proc.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return {"returncode": proc.returncode, "seconds": time.time() - start, "stopped_at_deadline": stopped}
