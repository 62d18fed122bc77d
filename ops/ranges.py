"""The valid range of every numeric flag, in one table that every entry point checks the same way.

Keyed by the argparse `dest`, so `--weight_decay` (main_clsa.py), `--wd`/`--weight-decay` (lincls.py) and
`--knn_t`/`--knn-t` share one rule. Every value must also be finite: `nan` and `inf` parse as floats but make a
run meaningless (a NaN learning rate trains nothing, a negative alpha maximises the divergence).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ops.errors import UsageError


@dataclass(frozen=True)
class Range:
    """low <= value <= high (an open end excludes its bound; None: unbounded); always finite."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        """e.g. '>= 0', 'in 0..14' (integers); 'a finite number > 0', 'a finite number in [0, 1)' (floats)."""
        low, high = _num(self.low), _num(self.high)
        if integer:
            if self.low is not None and self.high is not None:
                return f"in {low}..{high}"
            return f">= {low}" if self.low is not None else f"<= {high}"
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {low}"
        else:
            text = f"{'<' if self.high_open else '<='} {high}"
        return "a finite number " + text


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


POSITIVE = Range(0, low_open=True)
COUNT = Range(0)  # a number of things, 0 allowed
AT_LEAST_ONE = Range(1)
SEED = Range(0, 2**32 - 1)  # numpy's seeds are 32-bit; per-sample seeds need seed >= 0

RANGES: dict[str, Range] = {
    # sizes and counts
    "epochs": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "moco_k": AT_LEAST_ONE, "moco_dim": AT_LEAST_ONE,
    "cpu_procs": AT_LEAST_ONE, "print_freq": AT_LEAST_ONE, "knn_freq": AT_LEAST_ONE, "knn_k": AT_LEAST_ONE,
    "knn_size": AT_LEAST_ONE, "train_crop": AT_LEAST_ONE, "val_resize": AT_LEAST_ONE, "val_crop": AT_LEAST_ONE,
    "image_size": AT_LEAST_ONE, "svm_folds": AT_LEAST_ONE,
    "workers": COUNT, "warmup_iters": COUNT, "max_iters": COUNT, "start_epoch": COUNT, "save_freq": COUNT,
    "eval_freq": COUNT,
    "subset": COUNT, "bank": COUNT, "queries": COUNT, "monitor_queries": COUNT, "monitor_bank": COUNT,
    "aug_times": Range(0, 14),  # RandAugment ops per strong view, at most the size of FixMatch's pool
    "seed": SEED, "seeds": SEED, "random_seeds": SEED,
    # optimisation
    "lr": POSITIVE, "lr_multi": POSITIVE, "final_lr": COUNT, "momentum": Range(0, 1, high_open=True),
    "weight_decay": COUNT,
    # method and monitors
    "moco_m": Range(0, 1), "moco_t": POSITIVE, "clsa_t": POSITIVE, "alpha": COUNT, "knn_t": POSITIVE,
    "svm_costs": POSITIVE,
    # run
    "dist_timeout": Range(0, 525600, low_open=True),  # minutes, at most a year (timedelta and gloo overflow)
    "budget_min": POSITIVE,
    # demo.py's fine-tune (0: skipped)
    "finetune_fraction": Range(0, 1), "finetune_epochs": AT_LEAST_ONE, "finetune_lr": POSITIVE,
}


def flag_name(action: argparse.Action) -> str:
    """The flag as --help lists it first (`--lr`, `--wd`, `--batch-size`), preferring a long option."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 table: dict[str, Range] | None = None) -> None:
    """Raise UsageError naming the first flag of `parser` whose value (each value of a list) is outside its range
    in `table` (default RANGES). Flags left at None (e.g. --seed not given) are not checked."""
    table = RANGES if table is None else table
    for action in parser._actions:
        rule, value = table.get(action.dest), getattr(args, action.dest, None)
        if rule is None or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not rule.accepts(v):
                raise UsageError(f"{flag_name(action)} must be {rule.describe(action.type is int)}, got {v}")
