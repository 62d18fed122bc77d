#!/usr/bin/env python3
"""Linear evaluation of a CLSA encoder (or a weighted kNN evaluation with --knn).

    python3 lincls.py --data=<root with train/ and val/> --dist-url=tcp://localhost:10001 --pretrained=<ckpt>
    python3 lincls.py --data=<root> -e --resume=<run dir>/model_best.pth.tar      # validate a linear checkpoint
    python3 lincls.py --data=<root> --knn --pretrained=<ckpt>                      # kNN top-1/top-5, no training

The backbone is frozen in eval mode; only the new fc is trained (SGD over exactly fc.weight and fc.bias).
Validation is exact under DDP: every rank takes the images `rank::world` and the correct counts are summed.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms as T

from clsa.builder import backbone
from clsa.checkpoint import best_acc_value, is_pretraining_state, prefixed_state_dict, restore_run_state, save_run_state
from clsa.distributed import broadcast_object, wrap_ddp
from clsa.engine import set_learning_rate
from clsa.evaluation import eval_transform, shard_indices
from clsa.faults import StopRequest
from clsa.knn import KNNMonitor
from clsa.linear import (
    backbone_snapshot,
    changed_backbone_tensors,
    linear_lr,
    linear_model,
    train_linear_epoch,
    trainable_parameters,
    validate,
)
from clsa.pretrained import load_encoder_weights
from data_processing.datasets import build_dataset, labelled_splits
from data_processing.transforms import normalize
from ops.environment import seed_everything, seed_worker
from ops.errors import UsageError, exit_usage
from ops.launch import DistContext, launch
from ops.lincls_argparser import check_lincls_args, parse_args
from ops.runlog import RunLogger, format_duration, timestamp, unique_run_dir

PROG = "lincls.py"


def run_dir_for(args: argparse.Namespace) -> str:
    """<save_path>/<log_path>/{Finetune_log,kNN_log}/<yymmdd-HHMMSS>, or the directory of --resume."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    return unique_run_dir(os.path.join(args.save_path, args.log_path, "kNN_log" if args.knn else "Finetune_log",
                                       timestamp()))


def remove_run_dir(run_dir: str) -> None:
    """Delete the run directory of a refused run, and its <log_path>/<kind> parents when they are left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (os.path.dirname(run_dir), os.path.dirname(os.path.dirname(run_dir))):
        try:
            os.rmdir(parent)
        except OSError:
            break


def transforms(args: argparse.Namespace) -> tuple[T.Compose, T.Compose]:
    """Train: RandomResizedCrop(train-crop) + flip; val: Resize(val-resize) + CenterCrop(val-crop); normalised."""
    train = T.Compose([T.RandomResizedCrop(args.train_crop), T.RandomHorizontalFlip(), normalize()])
    val = eval_transform(args.val_crop, args.val_resize)
    return train, val


def per_process(args: argparse.Namespace, ctx: DistContext) -> tuple[int, int]:
    """(batch, workers) of one process: the per-node values divided among the node's processes."""
    if args.batch_size < ctx.local_world_size:
        raise UsageError(f"--batch-size {args.batch_size} is smaller than the {ctx.local_world_size} processes "
                         f"per node")
    return args.batch_size // ctx.local_world_size, math.ceil(args.workers / ctx.local_world_size)


def loader_kwargs(workers: int, ctx: DistContext) -> dict:
    return {"num_workers": workers, "pin_memory": ctx.device.type == "cuda", "worker_init_fn": seed_worker,
            "persistent_workers": workers > 0}


def class_names(dataset: Dataset) -> list[str]:
    return list(dataset.classes)


def load_weights(model: torch.nn.Module, args: argparse.Namespace, logger: RunLogger) -> None:
    """--pretrained into the backbone (with fc under -e), or say that the backbone is random."""
    if not args.pretrained:
        if not args.resume:
            logger.info("=> no --pretrained: the backbone is randomly initialised (a baseline)")
        return
    logger.info(f"=> loading checkpoint '{args.pretrained}'")
    report = load_encoder_weights(model, args.pretrained, keep_fc=args.evaluate, trust=args.trust_checkpoint)
    if args.evaluate and not args.resume and not report.fc_loaded:
        raise UsageError(f"-e: --pretrained {args.pretrained!r} has no linear classifier for these classes; "
                         f"evaluate a lincls.py checkpoint (checkpoint_last.pth.tar or model_best.pth.tar)")
    logger.info(f"=> loaded pre-trained model '{args.pretrained}' ({report.describe()})")


def resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, args: argparse.Namespace,
           logger: RunLogger) -> float:
    """Load a lincls.py checkpoint; returns its best Acc@1 and sets args.start_epoch."""
    def check(ckpt: dict) -> None:
        if is_pretraining_state(ckpt["state_dict"]):
            raise UsageError(f"--resume {args.resume!r} is a pretraining checkpoint; pass it as --pretrained")

    ckpt = restore_run_state(args.resume, model, optimizer, args.trust_checkpoint, check, restore_rng=False,
                             fits=f"--arch {args.arch} and these classes")
    args.start_epoch = int(ckpt.get("epoch", 0))
    logger.info(f"=> loaded checkpoint '{args.resume}' (epoch {args.start_epoch})")
    return best_acc_value(ckpt)


def val_loader(val_set: Dataset, batch: int, workers: int, ctx: DistContext) -> DataLoader:
    """This rank's shard rank::world of the validation split, in order (no padding, no shuffling)."""
    shard = Subset(val_set, shard_indices(len(val_set), ctx.rank, ctx.world_size))
    return DataLoader(shard, batch_size=batch, shuffle=False, **loader_kwargs(workers, ctx))


def knn_worker(ctx: DistContext, args: argparse.Namespace, logger: RunLogger) -> None:
    """Weighted kNN: bank = train split, queries = val split, features of the frozen backbone."""
    batch, workers = per_process(args, ctx)
    model = backbone(args.arch)
    load_weights(model, args, logger)
    model.to(ctx.device)
    bank, queries = labelled_splits(args.dataset, args.data, eval_transform(args.val_crop, args.val_resize))
    monitor = KNNMonitor(bank, queries, args.knn_k, args.knn_t, workers=workers, log=logger.info, batch_size=batch)
    res = monitor.evaluate(model)
    logger.info(f"kNN (k={args.knn_k}, t={args.knn_t}) on {res['queries']} val images, bank {res['bank']} train "
                f"images, {res['classes']} classes, {format_duration(res['seconds'])}")
    logger.info(f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}")
    logger.write_json("knn.json", {**res, "mode": "knn", "epoch": None, "arch": args.arch,
                                   "pretrained": args.pretrained})


def main_worker(ctx: DistContext, args: argparse.Namespace) -> None:
    seed_everything(args.seed, ctx.rank, deterministic=args.seed is not None)
    run_dir = broadcast_object(run_dir_for(args) if ctx.is_main else None)
    logger = RunLogger(run_dir, ctx.is_main, log_name="knn.log" if args.knn else "train.log",
                       tensorboard=not (args.knn or args.evaluate))
    logger.info(f"run directory: {run_dir}")
    logger.info(f"{ctx.world_size} process(es) on {ctx.device.type}, arch {args.arch}")
    try:
        if args.knn:
            knn_worker(ctx, args, logger)
        else:
            linear_worker(ctx, args, logger, run_dir)
    except UsageError:
        logger.close()
        if ctx.is_main and not args.resume:
            remove_run_dir(run_dir)
        raise
    finally:
        logger.close()


def linear_worker(ctx: DistContext, args: argparse.Namespace, logger: RunLogger, run_dir: str) -> None:
    batch, workers = per_process(args, ctx)
    train_tf, val_tf = transforms(args)
    val_set = build_dataset(args.dataset, args.data, "val", val_tf)
    classes = class_names(val_set)
    train_set = None
    if not args.evaluate:
        train_set = build_dataset(args.dataset, args.data, "train", train_tf)
        if class_names(train_set) != classes:
            raise UsageError(f"--data {args.data!r}: train/ and val/ have different class folders")

    model = linear_model(args.arch, len(classes))
    load_weights(model, args, logger)
    model.to(ctx.device)
    optimizer = torch.optim.SGD(trainable_parameters(model), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    best_acc1 = resume(model, optimizer, args, logger) if args.resume else 0.0
    reference = backbone_snapshot(model)
    if ctx.distributed:
        # BN is frozen and identical on every rank: no buffer broadcast
        model = wrap_ddp(model, ctx.device, reproducible=args.seed is not None, forward_sync_buffers=False)
    loader_val = val_loader(val_set, batch, workers, ctx)
    logger.info(f"{len(classes)} classes, {len(val_set)} val images"
                + (f", {len(train_set)} train images" if train_set is not None else "")
                + f", batch {batch} per process")

    if args.evaluate:
        res = validate(model, loader_val, ctx.device, args.print_freq, logger.info)
        logger.write_json("evaluate.json", {**res, "epoch": args.start_epoch, "mode": "evaluate",
                                            "arch": args.arch, "checkpoint": args.resume or args.pretrained})
        return

    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=args.seed or 0)
    loader_train = DataLoader(train_set, batch_size=batch, sampler=sampler, **loader_kwargs(workers, ctx))
    logger.write_json("args.json", vars(args))
    best_epoch, res = None, {}
    stop = StopRequest().install()
    if args.start_epoch >= args.epochs:
        logger.info(f"nothing to train: --resume {args.resume!r} is at epoch {args.start_epoch}, --epochs is "
                    f"{args.epochs}; pass a larger --epochs to train further, or -e to only validate")
    for epoch in range(args.start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        lr = linear_lr(args.lr, args.final_lr, epoch, args.epochs, args.cos, args.schedule)
        set_learning_rate(optimizer, lr)
        start = time.time()
        train = train_linear_epoch(model, loader_train, optimizer, epoch, ctx.device, args.print_freq, logger.info,
                                   stop)
        if train["stopped"]:  # preempted: keep the weights, redo this (short) epoch on --resume
            path = save_linear(model, optimizer, args, run_dir, epoch, best_acc1, False)
            logger.info(f"{stop.name}: saved {path}; epoch {epoch} restarts with --resume {path}")
            raise SystemExit(stop.exit_code)
        res = validate(model, loader_val, ctx.device, args.print_freq, logger.info)
        is_best = res["top1"] > best_acc1
        best_acc1 = max(res["top1"], best_acc1)
        best_epoch = epoch if is_best else best_epoch
        logger.info(f"epoch {epoch} done in {format_duration(time.time() - start)}: lr {lr:.4g} "
                    f"train loss {train['loss']:.4f} Acc@1 {res['top1']:.3f} (best {best_acc1:.3f})")
        logger.scalars({"linear/train_loss": train["loss"], "linear/val_top1": res["top1"],
                        "linear/val_top5": res["top5"], "linear/lr": lr}, epoch)
        logger.write_json("linear.json", {"top1": res["top1"], "top5": res["top5"], "epoch": epoch + 1,
                                          "best_acc1": best_acc1, "best_epoch": best_epoch,
                                          "images": res["images"], "mode": "linear", "arch": args.arch,
                                          "pretrained": args.pretrained})
        save_linear(model, optimizer, args, run_dir, epoch + 1, best_acc1, is_best)
    changed = changed_backbone_tensors(model, reference)
    if changed:
        raise RuntimeError(f"sanity check failed: {len(changed)} backbone tensors changed, e.g. {changed[:3]}")
    logger.info(f"=> sanity check passed: {len(reference)} backbone tensors (weights and BN statistics) unchanged")


def save_linear(model, optimizer, args, run_dir: str, epoch: int, best_acc1: float, is_best: bool) -> str:
    """Rank 0 writes checkpoint_last.pth.tar (epoch = the next epoch to run) and, when `is_best`, model_best.pth.tar.
    `best_acc1` is stored under main_clsa.py's name, best_acc, and under the 2021 MoCo name other tools read."""
    state = {"epoch": epoch, "arch": args.arch, "state_dict": prefixed_state_dict(model), "best_acc": best_acc1,
             "best_acc1": best_acc1, "optimizer": optimizer.state_dict(), "args": vars(args).copy()}
    return save_run_state(state, run_dir, epoch - 1, is_best)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_lincls_args(args)
    except UsageError as err:
        exit_usage(PROG, err)
    launch(main_worker, args, PROG)


if __name__ == "__main__":
    main()
