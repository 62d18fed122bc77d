#!/usr/bin/env python3
"""How far bf16 and torch.compile move the CLSA loss, and why it is far at tiny sizes.

For each (batch, view size) and seed, one CLSA model (resnet18 by default) and one batch of real views (the photos
through the project's view pipeline) give the first step's loss (train-mode forward, shuffle-BN, InfoNCE + alpha
DDM, no update) in several variants, each reported as its relative difference to the plain fp32 loss:

  inputs-bf16   fp32 throughout, only the input images rounded to bf16 once: how sensitive the loss is to a
                perturbation of one bf16 rounding (relative 2^-9), whatever produces it
  ... eval-BN   the same with BatchNorm on its running statistics (eval mode) instead of the batch's, against the
                fp32 loss in eval mode: how much of that sensitivity train-mode BN over few values adds
  amp           --amp (bf16 autocast, eager)
  compile       --compile in fp32 (only with --compile)
  amp+compile   --amp --compile (only with --compile)

If `amp` moves the loss about as much as `inputs-bf16` does, the difference is the loss's conditioning at that
size, not an error of bf16 or of the compiler; `compile` in fp32 should match the eager loss to fp32 rounding.

    python3 benchmarks/precision_check.py                     # batches 4 8 32 64, 32 px, 3 seeds (a minute)
    python3 benchmarks/precision_check.py --compile --seeds 1 # adds the compiled variants (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.bench_step import make_views  # noqa: E402
from benchmarks.settings import Setting  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 32, 64])
    p.add_argument("--sizes", type=int, nargs="+", default=[32], help="key/weak view size; the strong view is 3/4")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell (model and views)")
    p.add_argument("--moco_k", type=int, default=64)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--compile", action="store_true", help="also the compiled variants")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


# variant -> (inputs rounded to bf16, bf16 autocast, compiled, BN on batch statistics); each is compared with fp32
# under the same BN mode.
VARIANTS = {"inputs-bf16": (True, False, False, True), "inputs-bf16 eval-BN": (True, False, False, False),
            "amp": (False, True, False, True), "compile": (False, False, True, True),
            "amp+compile": (False, True, True, True)}


def first_loss(args: argparse.Namespace, views: list, seed: int, round_inputs: bool = False, amp: bool = False,
               compiled: bool = False, train_bn: bool = True) -> float:
    """The first step's loss of a fresh model (seed) on `views` (no update)."""
    import torch

    from clsa.builder import CLSA
    from clsa.engine import autocast
    if round_inputs:
        views = [v.bfloat16().float() for v in views]
    torch.manual_seed(seed)
    model = CLSA(args.arch, 128, args.moco_k, 0.999, mlp=True, sym=False).to(args.device).train(train_bn)
    if compiled:
        torch._dynamo.reset()  # a fresh model per cell: start each from an empty compile cache
        model.compile_encoders()
    with torch.no_grad(), autocast(torch.device(args.device), amp):
        return float(model(views[0], [views[1]], [views[2]])[0])


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch
    torch.set_num_threads(1)
    variants = [v for v in VARIANTS if args.compile or "compile" not in v]
    res = {"benchmark": "precision", "arch": args.arch, "device": args.device, "seeds": args.seeds,
           "machine": common.machine(), "cells": []}
    rows = []
    for size in args.sizes:
        setting = Setting("precision", [size, size * 3 // 4], [0.2, 0.1], [1.0, 0.5], pick_weak=[0], pick_strong=[1])
        for batch in args.batches:
            cell = {"batch": batch, "size": size, "fp32": [], **{v: [] for v in variants}}
            for seed in range(args.seeds):
                views = [v.to(args.device) for v in make_views(setting, batch, seed)[0]]
                ref = {bn: first_loss(args, views, seed, train_bn=bn) for bn in (True, False)}
                cell["fp32"].append(ref[True])
                for v in variants:
                    round_inputs, amp, compiled, train_bn = VARIANTS[v]
                    loss = first_loss(args, views, seed, round_inputs, amp, compiled, train_bn)
                    cell[v].append(abs(loss - ref[train_bn]) / abs(ref[train_bn]))
            res["cells"].append(cell)
            rows.append([batch, size, f"{statistics.mean(cell['fp32']):.4f}",
                         *[f"{statistics.mean(cell[v]):.1e} (max {max(cell[v]):.0e})" for v in variants]])
            print(f"  batch {batch} size {size}: done", file=sys.stderr, flush=True)
    print(f"first-step loss, {args.arch}, {args.device}: relative difference to fp32, mean (max) over "
          f"{args.seeds} seed(s)")
    common.print_table(["batch", "px", "fp32 loss", *variants], rows)
    if args.json:
        common.print_json(res)
    return res


if __name__ == "__main__":
    main()
