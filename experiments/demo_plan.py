"""The demo's plan: measure this machine's speed, size the evaluation and the pretraining to --budget_min
(experiments/demo_sizing.py), and keep the plan of an unfinished run so that a rerun continues it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

from experiments.demo_sizing import SPEED_MARGIN, EvalSizes, Plan, fit, fit_eval, steady_rate
from experiments.pretrain_run import CHECKPOINT, checkpoint_epoch, run_pretraining
from experiments.recipe import Recipe
from ops.atomic import write_json

PROG = "demo.py"
CALIBRATION_ITERS = 40  # iterations of the speed measurement before the run is sized
CALIBRATION_SHARE = 0.06  # ... or this share of the budget, whichever ends first


def eval_sizes(args: argparse.Namespace) -> EvalSizes:
    """The evaluation and monitor sizes the flags ask for (0 resolved to what it means)."""
    bank, queries = args.bank or 60000, args.queries or 10000
    passes = round((64 if args.smoke else 60000) * args.finetune_fraction) * args.finetune_epochs
    return EvalSizes(bank, queries, min(args.monitor_bank or bank, bank), min(args.monitor_queries or queries, queries),
                     passes)


def saved_plan(args: argparse.Namespace) -> tuple[Plan, float, EvalSizes] | None:
    """The plan, evaluation reserve and sizes of an earlier run in <out> asked with the same flags."""
    path = os.path.join(args.out, "plan.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved["asked"] != [args.epochs, args.subset] or saved.get("asked_eval") != vars(eval_sizes(args)):
        return None
    return Plan(**saved["plan"]), saved["eval_s"], EvalSizes(**saved["eval"])


def size_run(args: argparse.Namespace, recipe: Recipe, folders: dict[str, str], run_dir: str, start: float,
             asked: list[int], asked_eval: EvalSizes, saved: tuple[Plan, float, EvalSizes] | None
             ) -> tuple[Plan, float, EvalSizes]:
    """Measure this machine's speed in a few iterations, size the evaluation (demo_sizing.fit_eval), then fit whole
    epochs into what is left (demo_sizing.fit); an unfinished run in `run_dir` keeps the plan it started with.
    Returns (plan, seconds kept for evaluation, evaluation sizes)."""
    epochs = recipe.epochs
    if saved is not None and os.path.isdir(run_dir):
        recipe.epochs = saved[0].epochs
        if resumable(run_dir, recipe):
            print(f"{PROG}: continuing the unfinished run: {saved[0].epochs} epochs on {saved[0].images} images",
                  flush=True)
            return saved
        recipe.epochs = epochs
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    cal_dir = os.path.join(args.out, "calibrate")
    shutil.rmtree(cal_dir, ignore_errors=True)
    iters = 4 if args.smoke else CALIBRATION_ITERS
    cal = dataclasses.replace(recipe, epochs=1, max_iters=iters, print_freq=1 if args.smoke else 2)
    limit = max(CALIBRATION_SHARE * args.budget_min * 60, 20.0)  # a slow machine stops the measurement early
    print(f"{PROG}: measuring this machine's speed over {iters} iterations (at most {limit:.0f} s)", flush=True)
    with open(os.path.join(args.out, "calibrate.log"), "w") as log:
        pre = run_pretraining(cal.argv(folders["pretrain"], cal_dir), time.time() + limit, log=lambda _: None,
                              stdout=log)
    with open(os.path.join(args.out, "calibrate.log")) as log:
        rate = steady_rate(log.read().splitlines(), recipe.batch_size)
    shutil.rmtree(cal_dir, ignore_errors=True)
    if (pre["returncode"] != 0 and not pre["stopped_at_deadline"]) or rate is None:
        raise SystemExit(f"{PROG}: error: the speed measurement failed (main_clsa.py exited with "
                         f"{pre['returncode']}); see {args.out}/calibrate.log")
    startup = max(pre["seconds"] - (0 if pre["stopped_at_deadline"] else iters * recipe.batch_size / rate), 0.0)
    safe = rate * SPEED_MARGIN
    sizes = fit_eval(safe, args.budget_min * 60, asked_eval)
    eval_s = sizes.seconds(safe)
    left = start + args.budget_min * 60 - time.time() - startup - eval_s
    plan = dataclasses.replace(fit(safe, left, epochs, asked[1] or 60000, sizes.monitor_images, recipe.batch_size),
                               img_per_s=rate)
    print(f"{PROG}: {plan.line(args.budget_min)}", flush=True)
    if sizes.counts != asked_eval.counts:
        print(f"{PROG}: evaluating on {sizes.bank} bank / {sizes.queries} test images (kNN monitor "
              f"{sizes.monitor_bank} / {sizes.monitor_queries}) to fit", flush=True)
    write_json(os.path.join(args.out, "plan.json"), {"plan": vars(plan), "asked": asked,
                                                      "asked_eval": vars(asked_eval), "eval_s": eval_s,
                                                      "eval": vars(sizes)})
    return plan, eval_s, sizes


def resumable(run_dir: str, recipe: Recipe) -> bool:
    """True when `run_dir` holds an unfinished run of the same recipe (an interrupted demo continues there)."""
    path = os.path.join(run_dir, "args.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(run_dir, CHECKPOINT))):
        return False
    with open(path) as f:
        saved = json.load(f)
    wanted = recipe.argv("", "")
    same = all(str(saved.get(flag[2:])) == wanted[i + 1] for i, flag in enumerate(wanted)
               if flag in ("--epochs", "--batch_size", "--lr", "--moco_k", "--moco_m", "--alpha", "--seed"))
    return same and checkpoint_epoch(run_dir) < recipe.epochs
