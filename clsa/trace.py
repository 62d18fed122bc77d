"""Debug records for tests of distributed runs, off unless the environment variable CLSA_TRACE_DIR is set.

With CLSA_TRACE_DIR=<dir>, every training process appends one JSON object per record to `<dir>/rank<r>.jsonl`
(r = global rank): what the shuffle-BN key encoder gathered and permuted (`clsa.builder`), which rows of the
gathered keys each process used as its positives, with its loss (`clsa.engine`), and which images each process
validated in `lincls.py` (`clsa.linear.validate`). tests/test_two_nodes.py reads them
to check, on real separate hosts, that the positives are the rows global rank x N + i. Nothing is recorded, and
nothing is computed for it, when the variable is unset.
"""

from __future__ import annotations

import json
import os

import torch

ENV = "CLSA_TRACE_DIR"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def fingerprint(x: torch.Tensor) -> list[float]:
    """One number per row (float64 sum): equal rows give equal numbers, so gathered rows can be matched."""
    return x.detach().flatten(1).double().sum(1).tolist()


def record(rank: int, kind: str, **values) -> None:
    """Append {"kind": kind, **values} (tensors as lists) to <CLSA_TRACE_DIR>/rank<rank>.jsonl."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    row = {"kind": kind, **{k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in values.items()}}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
