#!/usr/bin/env python3
"""CLSA pretraining entry: parse flags, check them, start one worker per GPU / CPU process / torchrun rank.

    python3 main_clsa.py --data=<root with train/> [flags of the paper's README]

Without a GPU the same command trains on CPU (gloo); `--cpu_procs N` spawns N CPU processes.
Exit codes: 0 done, 2 bad input, 3 non-finite loss, 69 lost contact with a peer process (another node or process
died or stopped answering within --dist_timeout; rerun with --resume auto), 75 preempted (SIGTERM/SIGUSR1; rerun
with --resume), 130 interrupted (SIGINT). A checkpoint is written before 75 and 130; a signal that comes before the
training loop's handler exists (during the imports and checks) exits 75 / 130 at once with one line: nothing to save.
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector
from ops.stop_signals import exit_on_stop_signals

if __name__ in ("__main__", "__mp_main__"):  # first of all, before torch's slow import (spawned workers too)
    pause_collector()
    exit_on_stop_signals("main_clsa.py")
if __name__ == "__main__":  # --help and malformed flags answer here, before torch's import (seconds on a CPU)
    from ops.argparser import parse_args as _parse_early

    _parse_early()

import argparse
import dataclasses
import math
import os
import sys

import torch
from torch.utils.data import DataLoader

from clsa.builder import CLSA
from clsa.checkpoint import (
    COMPAT_FIELDS,
    LAST,
    auto_resume_path,
    best_acc_value,
    check_compatible,
    last_checkpoint_state,
    prefixed_state_dict,
    restore_run_state,
    save_run_state,
)
from clsa.distributed import all_reduce_sum, broadcast_object, gather_objects, unwrap, wrap_ddp
from clsa.engine import DeviceBatches, LoopConfig, NonFiniteLoss, learning_rate, train_one_epoch
from clsa.faults import EXIT_NONFINITE, StopRequest, agree_to_stop
from clsa.losses import Objective
from data_processing.datasets import build_dataset
from data_processing.device_views import DeviceViews, EncodedImages, collate_encoded, read_file_bytes
from data_processing.gpu_views import BatchViews
from data_processing.sampling import EpochSampler, RobustViews, UnreadableImage, shutdown_loader_workers
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import ViewPlan, expand_crops
from ops.argparser import naming_flag, parse_args
from ops.environment import keep_freed_memory, loader_worker_init, seed_everything
from ops.errors import UsageError, exit_usage
from ops.launch import DistContext, launch
from ops.runlock import RunLock, lock_run_dir
from ops.runlog import RunLogger, format_duration, timestamp, unique_run_dir
from ops.validate import check_auto_resume, check_batch, check_enough_images, check_pretrain_args

if __name__ in ("__main__", "__mp_main__"):
    imports_done()  # see ops/startup.py

PROG = "main_clsa.py"


def fixed_run_dir(args: argparse.Namespace) -> str:
    """--run_dir, or the resumed checkpoint's folder; '' for a fresh run (its folder is made by run_dir_for)."""
    if args.run_dir:
        return args.run_dir
    return os.path.dirname(os.path.abspath(args.resume)) if args.resume else ""


def run_dir_for(args: argparse.Namespace) -> str:
    """--run_dir, the resumed checkpoint's folder, or <log_path>/<dataset>/Alpha_<a>/Aug_<n>/lr_<lr>/cos_<c>/<stamp>.

    --alpha's default is the int 1 (as in 2021): "Alpha_1" by default, "Alpha_1.0" when passed.
    """
    stamp = os.path.join(args.log_path, args.dataset, f"Alpha_{args.alpha}", f"Aug_{args.aug_times}",
                         f"lr_{args.lr}", f"cos_{args.cos}", timestamp())
    return fixed_run_dir(args) or unique_run_dir(stamp)


def build_loader(args: argparse.Namespace, ctx: DistContext, batch: int, transform: MultiViewTransform | None
                 ) -> DataLoader:
    """The training loader: views built by the workers (`transform`), or with --views gpu (transform None) the
    images as file bytes (ImageFolder) or decoded uint8 tensors (Fashion-MNIST), left to DeviceViews."""
    if transform is None:
        images = EncodedImages(build_dataset(args.dataset, args.data, "train", None, loader=read_file_bytes))
    else:
        images = build_dataset(args.dataset, args.data, "train", transform)
    dataset = RobustViews(images, args.seed, args.strict_data)
    check_enough_images(len(dataset), batch * ctx.world_size)
    sampler = EpochSampler(dataset, ctx.world_size, ctx.rank, args.seed or 0, batch)
    workers = math.ceil(args.workers / ctx.local_world_size)
    generator = torch.Generator().manual_seed(args.seed + ctx.rank) if args.seed is not None else None
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=ctx.device.type == "cuda", worker_init_fn=loader_worker_init, generator=generator,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      collate_fn=collate_encoded if transform is None else None)


def resume(args: argparse.Namespace, model: CLSA, optimizer: torch.optim.Optimizer) -> dict:
    """Load --resume (or the --resume auto choice) into model and optimizer; returns the position to continue."""
    path = auto_resume_path(args.run_dir) if args.resume == "auto" else args.resume
    if not path:
        return {"path": "", "epoch": args.start_epoch, "iteration": 0, "best_acc": float("-inf")}
    run = {k: getattr(args, k) for k in COMPAT_FIELDS}
    with naming_flag("--resume"):
        ckpt = restore_run_state(path, model, optimizer, args.trust_checkpoint,
                                 check=lambda c: check_compatible(c, run, path))
    return {"path": path, "epoch": int(ckpt["epoch"]), "iteration": int(ckpt.get("iteration", 0)),
            "best_acc": best_acc_value(ckpt)}


def save(model, optimizer, args, run_dir, epoch, iteration, best_acc, is_best=False) -> str:
    """Every process calls; rank 0 writes. `epoch`/`iteration`: where to continue."""
    state = {"epoch": epoch, "iteration": iteration, "arch": args.arch, "state_dict": prefixed_state_dict(model),
             "optimizer": optimizer.state_dict(), "best_acc": best_acc, "args": vars(args).copy(), "scaler": None}
    done = epoch - 1 if iteration == 0 else epoch  # the 0-based epoch the periodic copies are named after
    return save_run_state(state, run_dir, done, is_best and iteration == 0, args.save_freq if iteration == 0 else 0)


def rerun_hint(args: argparse.Namespace, run_dir: str) -> str:
    """After a lost peer: where the last checkpoint is (complete: files are written atomically) and how to go on."""
    state, _ = last_checkpoint_state(run_dir)
    flags = [] if args.resume == "auto" else ["--resume auto"]
    if not args.run_dir:
        flags.append(f"--run_dir {run_dir}")
    return f"{state}; rerun the same command" + (f" with {' '.join(flags)}" if flags else "")


def main_worker(ctx: DistContext, args: argparse.Namespace) -> None:
    """One training process; global rank 0 holds the run directory's lock until it exits, also on an error."""
    lock = RunLock()
    try:
        train_worker(ctx, args, lock)
    finally:
        lock.release()


def train_worker(ctx: DistContext, args: argparse.Namespace, lock: RunLock) -> None:
    stop = StopRequest().install()
    # --run_dir or --resume: a second run is refused before any work
    lock_run_dir(lock, fixed_run_dir(args), ctx.is_main, broadcast_object)
    if ctx.device.type == "cpu":
        keep_freed_memory()
    seed_everything(args.seed, ctx.rank, deterministic=args.seed is not None)
    batch = args.batch_size // ctx.local_world_size  # checked in main() (launch's check)
    plan = view_plan(args)
    make_views = (DeviceViews(BatchViews(plan), ctx.device, args.seed, ctx.rank, args.strict_data)
                  if args.views == "gpu" else None)  # --views gpu: built on the device from the file bytes
    loader = build_loader(args, ctx, batch, None if make_views else MultiViewTransform(plan))
    objective = Objective(args.moco_t, args.clsa_t, args.alpha, args.strong_loss)
    model = CLSA(args.arch, args.moco_dim, args.moco_k, args.moco_m, bool(args.mlp), bool(args.sym),
                 args.channels_last, objective).to(ctx.device)
    if args.compile:
        model.compile_encoders(len(set(plan.sizes())))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    pos = resume(args, model, optimizer)

    run_dir = broadcast_object(run_dir_for(args) if ctx.is_main else None)
    lock_run_dir(lock, run_dir, ctx.is_main, broadcast_object)  # a fresh run's new folder (taken above otherwise)
    ctx.rerun_hint = lambda: rerun_hint(args, run_dir)
    logger = RunLogger(run_dir, ctx.is_main)
    logger.info(f"run directory: {run_dir}")
    if lock.note:
        logger.info(f"warning: {lock.note}")
    logger.info(f"{ctx.world_size} process(es) on {ctx.device.type}, batch {batch} per process "
                f"(global {batch * ctx.world_size}), arch {args.arch}, K {args.moco_k}, "
                f"{loader.sampler.batches_per_epoch()} iterations/epoch")
    logger.info(f"views per image: {plan.describe()}")
    if pos["path"]:
        logger.info(f"resumed {pos['path']} at epoch {pos['epoch']} iteration {pos['iteration']} "
                    f"(queue_ptr {int(model.queue_ptr)})")
    if pos["epoch"] >= args.epochs:
        logger.info(f"nothing to train: {pos['path'] or 'the run'} is at epoch {pos['epoch']}, --epochs is "
                    f"{args.epochs}; pass a larger --epochs to train further")
    if ctx.distributed:
        model = wrap_ddp(model, ctx.device, reproducible=args.seed is not None)
        if model.find_unused_parameters:
            logger.info("--seed with more than 2 processes: DDP keeps its first gradient buckets, so a resumed run "
                        "computes the same losses (torch's find_unused_parameters warning that follows is expected)")
    logger.write_json("args.json", vars(args))
    try:
        train(model, optimizer, loader, plan, args, ctx, logger, run_dir, pos, stop, make_views)
    finally:
        shutdown_loader_workers(loader)
        logger.close()


def view_plan(args: argparse.Namespace) -> ViewPlan:
    """The one view layout of this run (alpha 0 is MoCo v2: no strong view is built or forwarded)."""
    crops = expand_crops(args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops)
    return ViewPlan.build(crops, args.pick_weak, args.pick_strong, args.aug_times, strong=args.alpha != 0)


def train(model, optimizer, loader, plan, args, ctx, logger, run_dir, pos, stop, make_views=None) -> None:
    knn_monitor = _knn_monitor(args, ctx, logger)

    def lr_at(epoch: float, iteration: int) -> float:
        return learning_rate(args.lr, epoch, args.epochs, args.cos, iteration, args.warmup_iters)

    loop = LoopConfig(plan, lr_at, loader.sampler.batches_per_epoch(), args.print_freq, args.max_iters, args.amp,
                      args.skip_nonfinite, check_lag=int(args.step_checks == "deferred" or (
                          args.step_checks == "auto" and ctx.device.type == "cuda")))
    batches = DeviceBatches(loader, ctx.device, make_views)
    best_acc, start_iter = pos["best_acc"], pos["iteration"]
    for epoch in range(pos["epoch"], args.epochs):
        loader.sampler.set_epoch(epoch)
        loader.sampler.start_batch = start_iter
        try:
            cfg = dataclasses.replace(loop, start_iter=start_iter)
            summary = train_one_epoch(model, batches, optimizer, epoch, cfg, ctx, logger, stop)
        except UnreadableImage as err:  # --strict_data: one line, from the process that met the file
            print(f"{PROG}: error: {err.line()} (drop --strict_data to skip it)", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except NonFiniteLoss as err:
            last = os.path.join(run_dir, LAST)
            logger.info(f"{PROG}: error: {err}; the last good checkpoint is {last if os.path.exists(last) else 'none'}"
                        "; lower --lr, or pass --skip_nonfinite to skip such steps")
            raise SystemExit(EXIT_NONFINITE) from None
        start_iter = 0
        _report_skipped(summary["skipped_files"], epoch, logger)
        if summary["stopped_at"] is not None:
            path = save(model, optimizer, args, run_dir, epoch, summary["stopped_at"], best_acc)
            logger.info(f"{stop.name}: saved {path} at epoch {epoch} iteration {summary['stopped_at']}; "
                        f"continue with --resume {path} (or --resume auto --run_dir {run_dir})")
            raise SystemExit(stop.exit_code)
        acc1 = _global_mean(summary["acc1"], ctx)
        is_best, best_acc = acc1 > best_acc, max(acc1, best_acc)
        # saved before anything else at the epoch's end can fail (the kNN monitor reads files): no epoch is lost
        path = save(model, optimizer, args, run_dir, epoch + 1, 0, best_acc, is_best)
        lr = optimizer.param_groups[0]["lr"]  # the last iteration's
        msg = (f"epoch {epoch} done in {format_duration(summary['seconds'])}: lr {lr:.4g} loss {summary['loss']:.4f} "
               f"(InfoNCE {summary['infonce']:.4f}, {unwrap(model).objective.strong_label} {summary['ddm']:.4f}) "
               f"Acc@1 {acc1:.2f} {summary['img_per_s']:.1f} img/s")
        scalars = {"epoch/loss": summary["loss"], "epoch/infonce": summary["infonce"], "epoch/ddm": summary["ddm"],
                   "epoch/acc1": acc1, "epoch/lr": lr}
        if knn_monitor is not None and ((epoch + 1) % args.knn_freq == 0 or epoch + 1 == args.epochs):
            with torch.random.fork_rng(devices=[]):  # the monitor leaves the training RNG (saved above) as it was
                scalars["knn/top1"] = knn_monitor(model)
            msg += f", kNN top-1 {scalars['knn/top1']:.2f}"
        logger.info(msg)
        logger.scalars(scalars, epoch)
        logger.info(f"saved {path}")
        if agree_to_stop(stop.signum is not None, ctx.device):
            logger.info(f"{stop.name}: stopping after epoch {epoch}; continue with --resume {path}")
            raise SystemExit(stop.exit_code)


def _report_skipped(local: list[str], epoch: int, logger: RunLogger) -> None:
    files = [f for part in gather_objects(local) for f in part]
    if files:
        logger.info(f"warning: epoch {epoch}: skipped {len(files)} unreadable image(s): {', '.join(files)}")


def _global_mean(value: float, ctx: DistContext) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    return float(all_reduce_sum(t).item() / ctx.world_size)


def _knn_monitor(args: argparse.Namespace, ctx: DistContext, logger: RunLogger):
    """A callable(model) -> kNN top-1 on --knn_data, or None when no monitor is asked for."""
    if not args.knn_data:
        return None
    from clsa.evaluation import eval_transform
    from clsa.knn import KNNMonitor
    from data_processing.datasets import labelled_splits
    bank, queries = labelled_splits(args.dataset, args.knn_data, eval_transform(args.knn_size or args.size_crops[0]))
    return KNNMonitor(bank, queries, args.knn_k, args.knn_t, workers=math.ceil(args.workers / ctx.local_world_size),
                      log=logger.info)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_pretrain_args(args)
        if args.resume == "auto":
            check_auto_resume(os.path.join(args.run_dir, LAST))
    except UsageError as err:
        exit_usage(PROG, err)
    launch(main_worker, args, PROG,
           check=lambda nproc, world: check_batch(args.batch_size, nproc, world, args.moco_k))


if __name__ == "__main__":
    main()
