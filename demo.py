#!/usr/bin/env python3
"""`make demo`: CLSA end to end on real Fashion-MNIST images on a CPU, in about 15 minutes.

    python demo.py                     # Fashion-MNIST from $FASHION_MNIST_DIR or the Debian package (installed
                                       # with apt-get when missing and run as root)
    python demo.py --data DIR          # another copy of the four IDX files
    python demo.py --smoke --data DIR  # seconds-long check of the whole pipeline (tests)

Steps: carve subsets (IDX folders under <out>/data), draw example key / weak / strong views, pretrain CLSA with
`main_clsa.py` (kNN monitor every epoch), evaluate the pretrained encoder and the same architecture at random
initialisation (kNN and linear probe on frozen features, then `finetune.py` of every layer on 1 % of the train
labels, all scored on the test split), plot the run and write results.json.
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector

if __name__ == "__main__":  # before the slow imports
    pause_collector()

import argparse
import json
import os
import shutil
import sys
import time

import torch

from experiments import fmnist_data
from experiments.demo_plan import eval_sizes, saved_plan, size_run
from experiments.demo_report import print_table, view_grid, write_figures
from experiments.demo_sizing import EvalSizes
from experiments.finetune_eval import Protocol, finetune_pair
from experiments.pretrain_run import (
    CHECKPOINT,
    evaluate_encoder,
    random_init_knn,
    run_pretraining,
    run_state,
)
from experiments.recipe import Recipe
from ops.atomic import write_json
from ops.errors import UsageError, exit_usage
from ops.ranges import check_ranges

if __name__ == "__main__":
    imports_done()  # see ops/startup.py

PROG = "demo.py"
FINETUNE_BATCH = 64  # the reproduction's fine-tune batch (experiments/finetune_eval.py)
WARMUP_ITERS = 100  # the reproduction's linear warmup, at most a tenth of a shorter run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="", help=f"folder of the Fashion-MNIST IDX files (default: ${fmnist_data.ENV_VAR}"
                                              " or the Debian package's folder)")
    p.add_argument("--out", default="results/demo", help="results folder")
    p.add_argument("--epochs", type=int, default=4, help="pretraining epochs over the subset")
    p.add_argument("--subset", type=int, default=0, help="training images for pretraining (0: all 60,000)")
    p.add_argument("--bank", type=int, default=10000, help="train images for the kNN bank and the linear probe")
    p.add_argument("--queries", type=int, default=0, help="test images evaluated at the end (0: all 10,000)")
    p.add_argument("--monitor_queries", type=int, default=2000, help="test images of the per-epoch kNN monitor")
    p.add_argument("--monitor_bank", type=int, default=5000, help="train images (of --bank) of the kNN monitor")
    p.add_argument("--finetune_fraction", type=float, default=0.01,
                   help="fine-tune both encoders on this fraction of the train labels (class-balanced; 0: skip)")
    p.add_argument("--finetune_epochs", type=int, default=10, help="epochs of each fine-tune run")
    p.add_argument("--finetune_lr", type=float, default=0.05,
                   help="fine-tune base lr per 256 images (SimCLR's), scaled to the batch of 64")
    p.add_argument("--budget_min", type=float, default=15.0,
                   help="wall-clock budget: pretraining is stopped (checkpointed) early to keep it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true",
                   help="discard an unfinished earlier run in <out> instead of resuming it (a finished run, or one "
                        "made with other settings, is always replaced)")
    p.add_argument("--no_install", action="store_true", help="never run apt-get")
    p.add_argument("--smoke", action="store_true", help="tiny everything: checks the pipeline in seconds")
    p.add_argument("--report", action="store_true", help="only reprint the table of <out>/results.json")
    return p


SCHEDULE = {"lr": 0.1, "cos": 3}  # the reproduction's: per-iteration cosine (warmup set once the run is sized)


def recipe_for(args: argparse.Namespace) -> Recipe:
    if args.smoke:
        return Recipe(epochs=2, batch_size=16, moco_k=64, print_freq=1, seed=args.seed, workers=0, max_iters=4,
                      **SCHEDULE)
    return Recipe(epochs=args.epochs, seed=args.seed, **SCHEDULE)


def check(args: argparse.Namespace) -> None:
    check_ranges(build_parser(), args)  # every numeric flag, from the one table in ops/ranges.py
    if args.smoke:
        args.subset, args.bank, args.queries, args.monitor_queries, args.monitor_bank = 64, 64, 40, 40, 64
        if args.finetune_fraction:
            args.finetune_fraction, args.finetune_epochs = 0.5, 1


def prepare_data(args: argparse.Namespace, source: str) -> tuple[dict[str, str], bool]:
    """Subset folders under <out>/data (pretrain, eval, monitor), rewritten only when the source or sizes changed.
    Returns (folders, whether they were rewritten)."""
    root = os.path.join(args.out, "data")
    spec = {"source": os.path.abspath(source), "subset": args.subset, "bank": args.bank, "queries": args.queries,
            "monitor_queries": args.monitor_queries, "monitor_bank": args.monitor_bank, "seed": args.seed,
            "finetune": bool(args.finetune_fraction)}
    spec_path = os.path.join(root, "subsets.json")
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            if json.load(f) == spec:
                roles = ("pretrain", "eval", "monitor") + (("finetune",) if args.finetune_fraction else ())
                return {role: os.path.join(root, role) for role in roles}, False
    folders = fmnist_data.carve(source, root, args.subset, args.bank, args.queries, args.seed,
                                monitor=args.monitor_queries or args.queries or 10000, monitor_bank=args.monitor_bank,
                                finetune=bool(args.finetune_fraction))
    write_json(spec_path, spec)
    return folders, True


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    args = build_parser().parse_args(argv)
    try:
        check(args)
        if args.report:
            return reprint(os.path.join(args.out, "results.json"))
        source = fmnist_data.locate(args.data or None, install=not args.no_install)
    except UsageError as err:
        exit_usage(PROG, err)
    os.makedirs(args.out, exist_ok=True)
    run_dir = os.path.join(args.out, "run")
    recipe = recipe_for(args)
    print(f"{PROG}: Fashion-MNIST from {source}; results in {args.out}/", flush=True)
    asked = [args.epochs, args.subset]
    asked_eval = eval_sizes(args)
    saved = None if args.fresh else saved_plan(args)
    if saved is not None:
        apply_sizes(args, saved[0].images, saved[2])
    folders, new_data = prepare_data(args, source)
    if os.path.isdir(run_dir) and (args.fresh or new_data):
        shutil.rmtree(run_dir)
    grid = view_grid(folders["pretrain"], recipe, os.path.join(args.out, "views.png"), args.seed)
    print(f"{PROG}: example views -> {grid}", flush=True)

    plan, eval_s, sizes = size_run(args, recipe, folders, run_dir, start, asked, asked_eval, saved)
    apply_sizes(args, plan.images, sizes)
    folders, _ = prepare_data(args, source)
    recipe.epochs = plan.epochs
    iters_per_epoch = plan.images // recipe.batch_size
    recipe.warmup_iters = min(WARMUP_ITERS, plan.epochs * iters_per_epoch // 10)
    argv_pre = recipe.argv(folders["pretrain"], run_dir, folders["monitor"])
    print(f"{PROG}: pretraining: {' '.join(argv_pre[1:])}", flush=True)
    deadline = start + args.budget_min * 60 - (0 if args.smoke else eval_s)
    pre = run_pretraining(argv_pre, deadline)
    ckpt = os.path.join(run_dir, CHECKPOINT)
    if pre["returncode"] not in (0, 75) and not pre["stopped_at_deadline"]:
        print(f"{PROG}: error: main_clsa.py exited with code {pre['returncode']}; see {run_dir}/train.log",
              file=sys.stderr)
        return 1
    state = run_state(run_dir) if os.path.isfile(ckpt) else {"epochs_done": 0, "iteration": 0}
    if state["epochs_done"] == 0 and state["iteration"] == 0:
        print(f"{PROG}: error: pretraining trained no iteration within --budget_min {args.budget_min:g}, so there "
              f"is no pretrained encoder to report; rerun (it resumes) or raise --budget_min", file=sys.stderr)
        return 1

    print(f"{PROG}: evaluating the pretrained and the random-init encoder (kNN + linear probe)", flush=True)
    results = {}
    for name, path in (("clsa", ckpt), ("random_init", None)):
        results[name] = evaluate_encoder(recipe.arch, path, args.seed, folders["eval"], recipe.knn_size,
                                         recipe.knn_k, recipe.knn_t)
        print(f"  {name}: kNN {results[name]['knn_top1']:.2f}  linear {results[name]['linear_top1']:.2f} "
              f"({results[name]['seconds']:.0f}s)", flush=True)
    finetune = finetune_both(args, folders.get("finetune"), ckpt, sizes)
    monitor_random = random_init_knn(recipe.arch, folders["monitor"], recipe.knn_size, recipe.knn_k, recipe.knn_t,
                                     seed=args.seed)["top1"]
    curves = write_figures(run_dir, args.out, monitor_random)
    summary = {"encoders": results, "finetune": finetune, "arch": recipe.arch, "epochs": recipe.epochs,
               "epochs_done": state["epochs_done"],
               "epochs_trained": state["epochs_done"] + state["iteration"] / max(iters_per_epoch, 1),
               "stopped_at_budget": pre["stopped_at_deadline"], "pretrain_images": args.subset or 60000,
               "knn_monitor": {"by_epoch": state["knn_monitor"], "random_init": monitor_random,
                               "queries": args.monitor_queries, "bank": args.monitor_bank or args.bank},
               "pretrain_seconds": pre["seconds"], "wall_time_s": time.time() - start,
               "recipe": {k: v for k, v in vars(recipe).items()}, "command": " ".join(argv_pre[1:]),
               "figures": curves + [grid], "tensorboard": run_dir, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "smoke": args.smoke,
               "plan": {**vars(plan), "budget_min": args.budget_min, "asked_epochs": asked[0],
                        "asked_images": asked[1] or 60000, "eval": vars(sizes), "asked_eval": vars(asked_eval)}}
    write_json(os.path.join(args.out, "results.json"), summary)  # atomic: never half a file
    print_table(summary)
    return 0


def finetune_both(args: argparse.Namespace, folder: str | None, ckpt: str, sizes: EvalSizes) -> dict:
    """finetune_pair of the pretrained and the random-init encoder, or {"skipped": why} when --finetune_fraction is
    0 or the evaluation had no time for it."""
    if not args.finetune_fraction:
        return {"skipped": "--finetune_fraction 0"}
    if not sizes.finetune_passes:
        print(f"{PROG}: the {args.finetune_fraction:.0%}-label fine-tune is skipped to fit --budget_min "
              f"{args.budget_min:g} on this machine", flush=True)
        return {"skipped": f"no time within --budget_min {args.budget_min:g}"}
    p = Protocol(batch=16 if args.smoke else FINETUNE_BATCH, workers=0 if args.smoke else 1)
    print(f"{PROG}: fine-tuning both encoders on {args.finetune_fraction:.0%} of the train labels "
          f"({args.finetune_epochs} epochs, base lr {args.finetune_lr:g}, batch {p.batch})", flush=True)
    try:
        return finetune_pair(ckpt, args.seed, folder, os.path.join(args.out, "finetune"), args.finetune_fraction,
                             args.finetune_epochs, args.finetune_lr, p)
    except RuntimeError as err:  # the frozen-feature results are still written; the log names the cause
        first = str(err).splitlines()[0]
        print(f"{PROG}: the fine-tune failed ({first}); see {args.out}/finetune/", file=sys.stderr, flush=True)
        return {"skipped": f"finetune.py failed: {first}"}


def apply_sizes(args: argparse.Namespace, images: int, sizes: EvalSizes) -> None:
    args.subset = images
    args.bank, args.queries = sizes.bank, sizes.queries
    args.monitor_bank, args.monitor_queries = sizes.monitor_bank, sizes.monitor_queries


def reprint(path: str) -> int:
    if not os.path.isfile(path):
        raise UsageError(f"--report: no {path}; run the demo first")
    with open(path) as f:
        print_table(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
