#!/usr/bin/env python3
"""Small-scale reproduction of the paper's claim on Fashion-MNIST: CLSA vs MoCo v2 vs random initialisation.

    nohup python experiments/reproduce.py > results/reproduce/reproduce.log 2>&1 &

Arms, at equal epochs, batch and training subset (flags of main_clsa.py, see experiments/recipe.py):
- `moco_v2`: the same code with --alpha 0 (no strong views are computed), key + one weak 32-px view;
- `clsa_single`: + one strong 16-px view (DDM, alpha 1): the paper's single-crop setting scaled to 28-px images;
- `clsa_multi`: 5 weak + 5 strong views at 32/28/24/20/16 px (the paper's 224/192/160/128/96 multi-crop);
- the ablation of CLSA's claim (single-crop views, a 2 x 2 design with `clsa_single`): `clsa_aug0` (DDM on the
  16-px crop without RandAugment, `--aug_times 0`), `strong_infonce` (the RandAugment-ed 16-px crop as an InfoNCE
  positive, `--strong_loss infonce`) and `smallcrop_infonce` (the plain 16-px crop as an InfoNCE positive:
  multi-crop MoCo, the view-matched baseline);
- `random_init`: the same resnet18 untrained (several seeds; evaluation only).
Each encoder is evaluated on the Fashion-MNIST test split by weighted kNN and a linear probe on frozen features
(experiments/probe.py) and, with `--finetune 1`, by fine-tuning every layer on 1 % and 10 % of the train labels
(experiments/finetune_eval.py: lr chosen on held-out train images; an arm done before, whose checkpoint is still
there, gets it added). Resumable: an arm whose result file exists is skipped; an interrupted pretraining resumes
from its checkpoint. A wall-clock budget stops a pretraining early (recorded as partial) to keep the deadline.
Results: results/reproduce/<arm>/result.json, results/reproduce/results.json and table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import fmnist_data  # noqa: E402
from experiments.finetune_eval import Protocol, finetune_encoder, prepare_folders  # noqa: E402
from experiments.pretrain_run import (  # noqa: E402
    CHECKPOINT,
    REPO,
    evaluate_encoder,
    random_init_knn,
    run_pretraining,
    run_state,
)
from experiments.recipe import MULTI_CROP, SINGLE_CROP, Recipe  # noqa: E402
from experiments.reproduce_table import summarise, write_table  # noqa: E402
from ops.atomic import write_json  # noqa: E402
from ops.errors import UsageError, exit_usage  # noqa: E402
from ops.ranges import check_ranges  # noqa: E402

PROG = "experiments/reproduce.py"
EVAL_RESERVE_S = 90  # kept per remaining evaluation when the budget guard stops a pretraining
FINETUNE_RESERVE_S = 1500  # and per remaining fine-tuning evaluation (about 20 min per encoder on 2 cores)


PRETRAIN_ARMS = ("moco_v2", "clsa_single", "clsa_multi", "clsa_sym", "clsa_aug0", "strong_infonce",
                 "smallcrop_infonce")
# The single-crop arms: name -> the Recipe fields that set them apart (all: 32-px key/weak, 16-px second crop).
SINGLE_ARMS = {"moco_v2": {"alpha": 0.0}, "clsa_single": {}, "clsa_sym": {"sym": 1},
               "clsa_aug0": {"aug_times": 0}, "strong_infonce": {"strong_loss": "infonce"},
               "smallcrop_infonce": {"strong_loss": "infonce", "aug_times": 0}}


def arms(epochs: int, seeds: list[int], random_seeds: list[int], schedule: dict | None = None,
         lr_multi: float | None = None, include: tuple[str, ...] = PRETRAIN_ARMS[:3]
         ) -> list[tuple[str, Recipe | None, int]]:
    """(name, recipe or None for random init, seed) in the order they run: the first random init, then per seed
    the single-crop arms in SINGLE_ARMS order (MoCo v2, CLSA single-crop, `--sym 1`, the three ablation arms), with
    CLSA multi-crop (3-4x the cost per epoch) and the other random inits after the first seed's group. `include`:
    the pretraining arms to run; `schedule`: Recipe fields shared by all arms (lr, cos, warmup_iters); `lr_multi`:
    the multi-crop arm's lr (its loss sums 5 InfoNCE + 25 DDM terms, not 1 + 1)."""
    sched = dict(schedule or {})
    multi = dict(sched, lr=lr_multi) if lr_multi else sched
    out: list[tuple[str, Recipe | None, int]] = [("random_init", None, random_seeds[0])]
    for i, seed in enumerate(seeds):
        group = [(name, Recipe(**{"epochs": epochs, "alpha": 1.0, "seed": seed, "crops": dict(SINGLE_CROP),
                                  **sched, **fields}), seed)
                 for name, fields in SINGLE_ARMS.items()]
        if i == 0:
            group.append(("clsa_multi", Recipe(epochs=epochs, alpha=1.0, seed=seed, crops=dict(MULTI_CROP), **multi),
                          seed))
        out += [arm for arm in group if arm[0] in include]
        if i == 0:
            out += [("random_init", None, s) for s in random_seeds[1:]]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="CLSA vs MoCo v2 vs random init on Fashion-MNIST.")
    p.add_argument("--data", default="", help=f"Fashion-MNIST folder (default: ${fmnist_data.ENV_VAR} or the "
                                              "Debian package's folder)")
    p.add_argument("--out", default="results/reproduce")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--subset", type=int, default=0, help="training images used for pretraining (0: all 60k)")
    p.add_argument("--bank", type=int, default=10000, help="train images: kNN bank and linear-probe training set")
    p.add_argument("--monitor_queries", type=int, default=1000, help="test images of the per-epoch kNN monitor")
    p.add_argument("--monitor_bank", type=int, default=2000, help="train images of the per-epoch kNN monitor")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining seeds (MoCo v2 and CLSA single)")
    p.add_argument("--arms", nargs="*", choices=PRETRAIN_ARMS, default=list(PRETRAIN_ARMS[:3]),
                   help="pretraining arms to run, none: only the random inits (clsa_sym: CLSA single-crop with "
                        "--sym 1; clsa_aug0, strong_infonce, smallcrop_infonce: the ablation, see the module's "
                        "docstring)")
    p.add_argument("--random_seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=0.1, help="pretraining lr (MoCo v2, CLSA single-crop)")
    p.add_argument("--lr_multi", type=float, default=0.02, help="pretraining lr of CLSA multi-crop")
    p.add_argument("--cos", type=int, default=3, help="main_clsa.py --cos (3: cosine per iteration)")
    p.add_argument("--warmup_iters", type=int, default=100, help="main_clsa.py --warmup_iters")
    p.add_argument("--budget_min", type=float, default=125.0, help="wall-clock budget of the whole experiment")
    p.add_argument("--finetune", type=int, choices=(0, 1), default=1,
                   help="1: also fine-tune every encoder on 1 %% and 10 %% of the labels (about 20 min each)")
    return p


def run_arm(name: str, recipe: Recipe | None, seed: int, folders: dict[str, str], out: str, deadline: float,
            left: int, reserve: float) -> dict:
    arm_dir = os.path.join(out, f"{name}_s{seed}")
    os.makedirs(arm_dir, exist_ok=True)
    result: dict = {"arm": name, "seed": seed}
    ckpt = None
    if recipe is not None:
        run_dir = os.path.join(arm_dir, "run")
        argv = recipe.argv(folders["pretrain"], run_dir, folders["monitor"])
        result["command"] = " ".join(argv[1:])
        print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {result['command']}", flush=True)
        with open(os.path.join(arm_dir, "pretrain.log"), "a") as log:
            pre = run_pretraining(argv, deadline - left * reserve, stdout=log)
        ckpt = os.path.join(run_dir, CHECKPOINT)
        if pre["returncode"] not in (0, 75) or not os.path.isfile(ckpt):
            raise RuntimeError(f"{name}: main_clsa.py exited with {pre['returncode']}; see {arm_dir}/pretrain.log")
        state = run_state(run_dir)
        result.update(epochs=recipe.epochs, epochs_done=state["epochs_done"], iteration=state["iteration"],
                      partial=bool(pre["stopped_at_deadline"]), pretrain_seconds=pre["seconds"],
                      knn_monitor=state["knn_monitor"], recipe=vars(recipe))
    result.update(evaluate_encoder("resnet18", ckpt, seed, folders["eval"], 32))
    print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: kNN {result['knn_top1']:.2f} linear "
          f"{result['linear_top1']:.2f}", flush=True)
    write_json(os.path.join(arm_dir, "result.json"), result)  # kept when the fine-tuning below is interrupted
    if "ft_full" in folders:
        add_finetune(result, ckpt, folders, arm_dir)
        write_json(os.path.join(arm_dir, "result.json"), result)
    return result


def add_finetune(result: dict, checkpoint: str | None, folders: dict[str, str], arm_dir: str) -> None:
    """result["finetune"]: the 1 % / 10 % fine-tuning evaluation of the arm's encoder (None: random init)."""
    ft = finetune_encoder(checkpoint, result["seed"], {"full": folders["ft_full"], "tune": folders["ft_tune"]},
                          os.path.join(arm_dir, "finetune"), Protocol(), log=lambda s: print(s, flush=True))
    result["finetune"] = ft
    print(f"[{time.strftime('%H:%M:%S')}] {result['arm']} seed {result['seed']}: fine-tuned, 1 % labels "
          f"{ft['pct1_mean']:.2f} (draws {', '.join(f'{v:.2f}' for v in ft['pct1_top1'])}), 10 % "
          f"{ft['pct10_mean']:.2f}", flush=True)


def backfill_finetune(done: str, folders: dict[str, str]) -> None:
    """Add the fine-tuning evaluation to a finished arm's result file when its checkpoint is still there."""
    with open(done) as f:
        result = json.load(f)
    if "finetune" in result:
        return
    arm_dir = os.path.dirname(done)
    ckpt = os.path.join(arm_dir, "run", CHECKPOINT) if result["arm"] != "random_init" else None
    if ckpt is not None and not os.path.isfile(ckpt):
        print(f"{result['arm']} seed {result['seed']}: no fine-tuning (its checkpoint {ckpt} is gone)", flush=True)
        return
    add_finetune(result, ckpt, folders, arm_dir)
    write_json(done, result)


def monitor_random_init(folder: str, out: str) -> float:
    """kNN top-1 of the seed-0 random-init resnet18 on the monitor set (cached in <out>/monitor_random_init.json)."""
    path = os.path.join(out, "monitor_random_init.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["top1"]
    res = random_init_knn("resnet18", folder, 32, 200, 0.1, seed=0)
    write_json(path, res)
    return res["top1"]


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    args = build_parser().parse_args(argv)
    try:
        check_ranges(build_parser(), args)  # every numeric flag, from the one table in ops/ranges.py
        source = fmnist_data.locate(args.data or None, install=False)
    except UsageError as err:
        exit_usage(PROG, err)
    os.chdir(REPO)
    os.makedirs(args.out, exist_ok=True)
    deadline = start + args.budget_min * 60
    root = os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(root, "monitor", "t10k-labels-idx1-ubyte.gz")):
        fmnist_data.carve(source, root, args.subset, args.bank, 0, seed=0, monitor=args.monitor_queries,
                          monitor_bank=args.monitor_bank)
    folders = {r: os.path.join(root, r) for r in ("pretrain", "eval", "monitor")}
    if args.finetune:
        folders.update({"ft_" + k: v for k, v in prepare_folders(source, root).items()})
    reserve = EVAL_RESERVE_S + (FINETUNE_RESERVE_S if args.finetune else 0)
    plan = arms(args.epochs, args.seeds, args.random_seeds,
                {"lr": args.lr, "cos": args.cos, "warmup_iters": args.warmup_iters}, args.lr_multi,
                tuple(args.arms))
    print(f"[{time.strftime('%H:%M:%S')}] {len(plan)} runs, {args.epochs} epochs on {args.subset or 'all'} train "
          "images, budget "
          f"{args.budget_min:.0f} min, results in {args.out}", flush=True)
    for i, (name, recipe, seed) in enumerate(plan):
        done = os.path.join(args.out, f"{name}_s{seed}", "result.json")
        if os.path.isfile(done):
            print(f"{name} seed {seed}: done ({done})", flush=True)
            if args.finetune:
                backfill_finetune(done, folders)
            continue
        if recipe is not None and time.time() > deadline - reserve:
            print(f"{name} seed {seed}: skipped, the budget is spent", flush=True)
            continue
        run_arm(name, recipe, seed, folders, args.out, deadline, len(plan) - i, reserve)
    meta = {"epochs": args.epochs, "lr": args.lr, "lr_multi": args.lr_multi, "cos": args.cos,
            "warmup_iters": args.warmup_iters, "subset": args.subset, "bank": args.bank, "queries": 10000,
            "monitor": {"bank": args.monitor_bank, "queries": args.monitor_queries,
                        "random_init": monitor_random_init(folders["monitor"], args.out)},
            "wall_time_s_this_invocation": time.time() - start, "cpu_count": os.cpu_count()}
    summary = summarise(args.out, meta)
    write_table(summary, os.path.join(args.out, "table.md"))
    print(open(os.path.join(args.out, "table.md")).read(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
