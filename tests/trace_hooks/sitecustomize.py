"""Test-only records of what every training process computed, installed from outside the library.

A process started with this folder on PYTHONPATH and CLSA_TRACE_DIR=<dir> imports this module at start-up (Python's
`sitecustomize` hook, also in mp.spawn and torchrun children), which wraps a few library functions so that each
process appends one JSON object per record to `<dir>/rank<r>.jsonl` (r = global rank):
- "keys": what the shuffle-BN key encoder gathered (one number per row), this process's own rows, the permutation;
- "step": epoch, iteration, the rows of the gathered keys used as this process's positives, and the loss;
- "val": which images this process validated in `clsa.linear.validate` (one number per image) and their targets.
tests/test_two_nodes.py reads them. Without CLSA_TRACE_DIR nothing is imported or wrapped.
"""

from __future__ import annotations

import json
import os
import sys

FOLDER = os.environ.get("CLSA_TRACE_DIR", "")


def _install() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import torch

    from clsa import builder, engine, linear
    from clsa.distributed import get_rank

    def fingerprint(x: torch.Tensor) -> list[float]:
        return x.detach().flatten(1).double().sum(1).tolist()

    def record(kind: str, **values) -> None:
        row = {"kind": kind, **{k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in values.items()}}
        os.makedirs(FOLDER, exist_ok=True)
        with open(os.path.join(FOLDER, f"rank{get_rank()}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    real_gather, real_broadcast, real_encode_keys = builder.concat_all_gather, builder.broadcast_tensor, \
        builder.CLSA.encode_keys

    def encode_keys(self, x):
        seen: dict = {}

        def gather(t):
            out = real_gather(t)
            seen.setdefault("gathered", out)  # the first gather is the key view's inputs
            return out

        def broadcast(t, src=0):
            seen["perm"] = real_broadcast(t, src=src)
            return seen["perm"]

        builder.concat_all_gather, builder.broadcast_tensor = gather, broadcast
        try:
            k = real_encode_keys(self, x)
        finally:
            builder.concat_all_gather, builder.broadcast_tensor = real_gather, real_broadcast
        if "perm" in seen:
            record("keys", gathered=fingerprint(seen["gathered"]), own=fingerprint(x), perm=seen["perm"])
        return k

    position: dict = {}
    real_epoch = engine.DeviceBatches.epoch

    def epoch(self, epoch, start_iter, log):
        for i, views in real_epoch(self, epoch, start_iter, log):
            position.update(epoch=epoch, iteration=i)
            yield i, views

    real_forward = builder.CLSA.forward

    def forward(self, key, weak, strong):
        objective = self.objective
        offsets = []

        def observed(q, s, keys, queue, offset):
            offsets.append(offset)
            return objective(q, s, keys, queue, offset)

        self.objective = observed
        try:
            loss, stats, keys = real_forward(self, key, weak, strong)
        finally:
            self.objective = objective
        n = key.shape[0]
        record("step", **position, positives=list(range(offsets[0], offsets[0] + n)), loss=loss.item())
        return loss, stats, keys

    real_validate = linear.validate

    class Recorded:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for images, target in self.loader:
                record("val", images=fingerprint(images), target=target)
                yield images, target

    def validate(model, loader, *args, **kwargs):
        return real_validate(model, Recorded(loader), *args, **kwargs)

    builder.CLSA.encode_keys, builder.CLSA.forward = encode_keys, forward
    engine.DeviceBatches.epoch = epoch
    linear.validate = validate


if FOLDER:
    _install()
