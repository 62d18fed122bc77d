"""Helpers shared by the benchmarks: machine description, interleaved timing, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python3 benchmarks/<name>.py` from anywhere
    sys.path.insert(0, REPO)


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def rate(fn: Callable[[int], int], seconds: float, min_calls: int = 1) -> float:
    """Items per second of `fn(i) -> items` called repeatedly for about `seconds` (at least `min_calls` calls)."""
    items, calls = 0, 0
    start = time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        items += fn(calls)
        calls += 1
    return items / (time.perf_counter() - start)


def interleaved_rates(fns: dict[str, Callable[[int], int]], seconds: float, repeats: int,
                      min_calls: int = 1) -> dict[str, list[float]]:
    """Run each mode for `seconds`, cycling through the modes `repeats` times (so background load hits all modes
    alike); returns every mode's list of rates."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(rate(fn, seconds, min_calls))
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median, the run-to-run spread."""
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def print_table(headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def print_json(obj: dict) -> None:
    """One JSON object on the last line of the output."""
    sys.stdout.flush()
    print(json.dumps(obj, sort_keys=True), flush=True)
