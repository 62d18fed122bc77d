#!/usr/bin/env python3
"""CLSA pretraining entry: parse flags, check them, start one worker per GPU / CPU process / torchrun rank.

    python3 main_clsa.py --data=<root with train/> [flags of the paper's README]

Without a GPU the same command trains on CPU (gloo); `--cpu_procs N` spawns N CPU processes.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from clsa.builder import CLSA
from clsa.checkpoint import (
    best_acc_value,
    load_checkpoint,
    load_prefixed_state_dict,
    prefixed_state_dict,
    rng_state,
    save_epoch_checkpoints,
    set_rng_state,
)
from clsa.distributed import all_reduce_sum, broadcast_object
from clsa.engine import learning_rate, set_learning_rate, train_one_epoch
from data_processing.datasets import build_dataset
from data_processing.transforms import MultiViewTransform, expand_crops
from ops.argparser import parse_args
from ops.environment import seed_everything, seed_worker
from ops.errors import UsageError, exit_usage
from ops.launch import DistContext, launch, plan
from ops.logging import RunLogger, format_duration, timestamp
from ops.validate import check_batch, check_pretrain_args

PROG = "main_clsa.py"


def run_dir_for(args: argparse.Namespace) -> str:
    """<log_path>/<dataset>/Alpha_<alpha>/Aug_<aug_times>/lr_<lr>/cos_<cos>/<yymmdd-HHMMSS>, or the resumed one."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    # --alpha's default is the int 1 (as in 2021): "Alpha_1" by default, "Alpha_1.0" when passed.
    return os.path.join(args.log_path, args.dataset, f"Alpha_{args.alpha}", f"Aug_{args.aug_times}", f"lr_{args.lr}",
                        f"cos_{args.cos}", timestamp())


def build_loader(args: argparse.Namespace, ctx: DistContext, batch: int, transform: MultiViewTransform) -> DataLoader:
    dataset = build_dataset(args.dataset, args.data, "train", transform)
    check_batch(args.batch_size, ctx.local_world_size, ctx.world_size, args.moco_k, len(dataset))
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=args.seed or 0, drop_last=True)
    workers = math.ceil(args.workers / ctx.local_world_size)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=ctx.device.type == "cuda", worker_init_fn=seed_worker,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def main_worker(ctx: DistContext, args: argparse.Namespace) -> None:
    seed_everything(args.seed, ctx.rank, deterministic=args.seed is not None)
    batch = check_batch(args.batch_size, ctx.local_world_size, ctx.world_size, args.moco_k, None)
    crops = expand_crops(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops)
    pick_strong = args.pick_strong if args.alpha != 0 else []  # alpha 0: MoCo v2, no strong views computed
    transform = MultiViewTransform(crops, args.pick_weak, pick_strong, args.aug_times)
    loader = build_loader(args, ctx, batch, transform)

    run_dir = broadcast_object(run_dir_for(args) if ctx.is_main else None)
    logger = RunLogger(run_dir, ctx.is_main)
    logger.info(f"run directory: {run_dir}")
    logger.info(f"{ctx.world_size} process(es) on {ctx.device.type}, batch {batch} per process "
                f"(global {batch * ctx.world_size}), arch {args.arch}, K {args.moco_k}, {len(loader)} iterations/epoch")
    sizes = transform.sizes()
    logger.info(f"views per image: key {sizes[0]}px, weak {sizes[1:1 + transform.num_weak]}, "
                f"strong {sizes[1 + transform.num_weak:]}")

    model = CLSA(args.arch, args.moco_dim, args.moco_k, args.moco_m, bool(args.mlp), bool(args.sym),
                 args.channels_last).to(ctx.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = None  # bf16 autocast needs no loss scaling
    best_acc = 0.0
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        load_prefixed_state_dict(model, ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        args.start_epoch, best_acc = int(ckpt["epoch"]), best_acc_value(ckpt)
        if "rng" in ckpt and ctx.world_size == 1:
            set_rng_state(ckpt["rng"])
        logger.info(f"resumed {args.resume} at epoch {args.start_epoch} (queue_ptr {int(model.queue_ptr)})")
    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    logger.write_json("args.json", vars(args))

    knn_monitor = _knn_monitor(args, ctx, logger)
    steps = len(loader)
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        lr = learning_rate(args.lr, epoch, args.epochs, args.cos)
        set_learning_rate(optimizer, lr)
        summary = train_one_epoch(model, loader, optimizer, scaler, epoch, ctx, args, logger,
                                  transform.num_weak, steps)
        acc1 = _global_mean(summary["acc1"], ctx)
        is_best = acc1 > best_acc
        best_acc = max(acc1, best_acc)
        msg = (f"epoch {epoch} done in {format_duration(summary['seconds'])}: lr {lr:.4g} loss {summary['loss']:.4f} "
               f"(InfoNCE {summary['infonce']:.4f}, DDM {summary['ddm']:.4f}) Acc@1 {acc1:.2f} "
               f"{summary['img_per_s']:.1f} img/s")
        scalars = {"epoch/loss": summary["loss"], "epoch/infonce": summary["infonce"], "epoch/ddm": summary["ddm"],
                   "epoch/acc1": acc1, "epoch/lr": lr}
        if knn_monitor is not None and ((epoch + 1) % args.knn_freq == 0 or epoch + 1 == args.epochs):
            knn_acc = knn_monitor(model)
            msg += f", kNN top-1 {knn_acc:.2f}"
            scalars["knn/top1"] = knn_acc
        logger.info(msg)
        logger.scalars(scalars, epoch)
        if ctx.is_main:
            state = {"epoch": epoch + 1, "arch": args.arch, "state_dict": prefixed_state_dict(model),
                     "optimizer": optimizer.state_dict(), "best_acc": best_acc, "args": vars(args).copy(),
                     "scaler": None, "rng": rng_state()}
            path = save_epoch_checkpoints(state, run_dir, epoch, is_best, args.save_freq)
            logger.info(f"saved {path}")
    logger.close()


def _global_mean(value: float, ctx: DistContext) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    return float(all_reduce_sum(t).item() / ctx.world_size)


def _knn_monitor(args: argparse.Namespace, ctx: DistContext, logger: RunLogger):
    """A callable(model) -> kNN top-1 on --knn_data, or None when no monitor is asked for."""
    if not args.knn_data:
        return None
    from clsa.knn import KNNMonitor
    return KNNMonitor(args.knn_data, args.dataset, args.knn_size or args.size_crops[0], args.knn_k, args.knn_t,
                      ctx, workers=math.ceil(args.workers / ctx.local_world_size), log=logger.info)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_pretrain_args(args)
        nproc, _, world, _ = plan(args)
        check_batch(args.batch_size, nproc, world, args.moco_k, None)
    except UsageError as err:
        exit_usage(PROG, err)
    start = time.time()
    launch(main_worker, args, PROG)
    if os.environ.get("RANK", "0") == "0":
        print(f"{PROG}: finished in {format_duration(time.time() - start)}", flush=True)


if __name__ == "__main__":
    main()
