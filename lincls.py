#!/usr/bin/env python3
"""Linear evaluation of a CLSA encoder (or a weighted kNN evaluation with --knn).

    python3 lincls.py --data=<root with train/ and val/> --dist-url=tcp://localhost:10001 --pretrained=<ckpt>
    python3 lincls.py --data=<root> -e --resume=<run dir>/model_best.pth.tar      # validate a linear checkpoint
    python3 lincls.py --data=<root> --knn --pretrained=<ckpt>                      # kNN top-1/top-5, no training

The backbone is frozen in eval mode; only the new fc is trained (SGD over exactly fc.weight and fc.bias).
Validation is exact under DDP: every rank takes the images `rank::world` and the correct counts are summed.
The run (epochs, checkpoints, stop signals) is clsa/classifier_run.py, shared with finetune.py, which also uses the
flag-level helpers here (run directory, weights, --resume, the training part of a worker). A training run holds its
run directory's lock (ops/runlock.py): a second one there, e.g. the same --resume twice, is one line, exit 2. A stop
signal before the training loop's handler exists (imports, loading, checks) exits 75 / 130 at once with one line.
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector
from ops.stop_signals import STOP_SIGNALS, exit_on_stop_signals

if __name__ in ("__main__", "__mp_main__"):  # first of all, before torch's slow import (spawned workers too)
    pause_collector()
    exit_on_stop_signals("lincls.py")
if __name__ == "__main__":  # --help and malformed flags answer here, before torch's import (seconds on a CPU)
    from ops.lincls_argparser import parse_args as _parse_early

    _parse_early()

import argparse
import os
import shutil
import signal
from collections.abc import Callable

import torch
from torch.nn import Module
from torch.utils.data import Dataset
from torchvision import transforms as T

from clsa.builder import backbone
from clsa.checkpoint import best_acc_value, is_pretraining_state, last_checkpoint_state, restore_run_state
from clsa.classifier_run import ClassifierRun, fit, train_loader, val_loader
from clsa.distributed import broadcast_object, wrap_ddp
from clsa.evaluation import eval_transform
from clsa.faults import StopRequest
from clsa.knn import KNNMonitor
from clsa.linear import (
    backbone_snapshot,
    changed_backbone_tensors,
    linear_lr,
    linear_model,
    trainable_parameters,
    validate,
)
from clsa.pretrained import load_encoder_weights
from data_processing.datasets import build_dataset, labelled_splits
from data_processing.transforms import normalize
from ops.argparser import naming_flag
from ops.environment import seed_everything
from ops.errors import UsageError, exit_usage
from ops.launch import DistContext, launch
from ops.lincls_argparser import check_lincls_args, parse_args
from ops.runlock import RunLock, lock_run_dir
from ops.runlog import RunLogger, format_duration, timestamp, unique_run_dir

if __name__ in ("__main__", "__mp_main__"):
    imports_done()  # see ops/startup.py

PROG = "lincls.py"
Body = Callable[[DistContext, argparse.Namespace, RunLogger, str], None]


def run_dir_for(args: argparse.Namespace, kind: str) -> str:
    """<save_path>/<log_path>/<kind>/<yymmdd-HHMMSS>, or the directory of --resume."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    return unique_run_dir(os.path.join(args.save_path, args.log_path, kind, timestamp()))


def rerun_hint(args: argparse.Namespace, run_dir: str, trains: bool) -> str:
    """After a lost peer: the last checkpoint (written atomically) and the --resume that continues from it."""
    if not trains:
        return "rerun the same command"
    state, last = last_checkpoint_state(run_dir)
    same = last is None or (args.resume and os.path.abspath(args.resume) == last)
    return f"{state}; rerun the same command" + ("" if same else f" with --resume {last}")


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
    return args.batch_size // ctx.local_world_size, -(-args.workers // ctx.local_world_size)


def open_splits(args: argparse.Namespace, with_train: bool, allow_empty: bool = False
                ) -> tuple[Dataset | None, Dataset, list[str]]:
    """(train split or None, val split, class names) of --data, with the --train-crop / --val-crop transforms."""
    train_tf, val_tf = transforms(args)
    try:
        val_set = build_dataset(args.dataset, args.data, "val", val_tf, allow_empty=allow_empty)
        train_set = build_dataset(args.dataset, args.data, "train", train_tf, allow_empty=allow_empty) \
            if with_train else None
    except FileNotFoundError as err:  # torchvision: a class folder without images
        raise UsageError(f"--data {args.data!r}: {str(err).splitlines()[0]}") from None
    classes = list(val_set.classes)
    if train_set is not None and list(train_set.classes) != classes:
        raise UsageError(f"--data {args.data!r}: train/ and val/ have different class folders")
    return train_set, val_set, classes


def load_weights(model: Module, args: argparse.Namespace, logger: RunLogger) -> None:
    """--pretrained into the backbone (with fc under -e), or say that the backbone is random."""
    evaluate = getattr(args, "evaluate", False)
    if not args.pretrained:
        if not args.resume:
            logger.info("=> no --pretrained: the backbone is randomly initialised (a baseline)")
        return
    logger.info(f"=> loading checkpoint '{args.pretrained}'")
    with naming_flag("--pretrained"):
        report = load_encoder_weights(model, args.pretrained, keep_fc=evaluate, trust=args.trust_checkpoint)
    if evaluate and not args.resume and not report.fc_loaded:
        raise UsageError(f"-e: --pretrained {args.pretrained!r} has no linear classifier for these classes; "
                         f"evaluate a lincls.py checkpoint (checkpoint_last.pth.tar or model_best.pth.tar)")
    logger.info(f"=> loaded pre-trained model '{args.pretrained}' ({report.describe()})")


def resume(model: Module, optimizer: torch.optim.Optimizer | None, args: argparse.Namespace, logger: RunLogger,
           mode: str | None, check: Callable[[dict], None] | None = None) -> dict:
    """Load a lincls.py / finetune.py checkpoint written in `mode` (None: any; the optimizer is then not loaded)
    after `check(ckpt)`; returns where to continue (ClassifierRun's start_epoch, start_iter, best_acc1, best_epoch)
    and sets args.start_epoch."""
    def checks(ckpt: dict) -> None:
        if is_pretraining_state(ckpt["state_dict"]):
            raise UsageError(f"--resume {args.resume!r} is a pretraining checkpoint; pass it as --pretrained")
        saved = ckpt.get("mode", "linear")
        if mode is not None and saved != mode:
            entry = {"linear": "lincls.py", "finetune": "finetune.py"}.get(saved, saved)
            raise UsageError(f"--resume {args.resume!r} was written by {entry} ({saved}); continue it there, or "
                             f"evaluate it with lincls.py -e --resume")
        if check is not None:
            check(ckpt)

    with naming_flag("--resume"):
        ckpt = restore_run_state(args.resume, model, optimizer if mode else None, args.trust_checkpoint, checks,
                                 restore_rng=False, fits=f"--arch {args.arch} and these classes")
    args.start_epoch = int(ckpt.get("epoch", 0))
    iteration = int(ckpt.get("iteration", 0))
    logger.info(f"=> loaded checkpoint '{args.resume}' (epoch {args.start_epoch}"
                + (f", batch {iteration})" if iteration else ")"))
    best_epoch = ckpt.get("best_epoch")
    return {"start_epoch": args.start_epoch, "start_iter": iteration, "best_acc1": best_acc_value(ckpt),
            "best_epoch": best_epoch if isinstance(best_epoch, int) else None}


def knn_worker(ctx: DistContext, args: argparse.Namespace, logger: RunLogger, run_dir: str) -> None:
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


def run_worker(ctx: DistContext, args: argparse.Namespace, kind: str, log_name: str, body: Body, trains: bool
               ) -> None:
    """Seed, make the run directory (rank 0, shared), lock it when the run `trains` (a second training run in it,
    e.g. the same --resume twice, is refused with one line), open the logger (with TensorBoard when it trains) and
    run `body`; a refused fresh run leaves no directory behind."""
    seed_everything(args.seed, ctx.rank, deterministic=args.seed is not None)
    run_dir = broadcast_object(run_dir_for(args, kind) if ctx.is_main else None)
    ctx.rerun_hint = lambda: rerun_hint(args, run_dir, trains)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}  # restored at the end (main() called as a library)
    if trains:  # before the lock: from here a stop signal ends in the training loop's checkpoint and the finally
        StopRequest.installed()
    else:  # -e, --knn: nothing to save, so a stop signal ends the run at once
        exit_on_stop_signals(PROG, "during evaluation", speak=ctx.is_main)
    lock = RunLock()
    try:
        if trains:
            lock_run_dir(lock, run_dir, ctx.is_main, broadcast_object)
        logger = RunLogger(run_dir, ctx.is_main, log_name=log_name, tensorboard=trains)
        logger.info(f"run directory: {run_dir}")
        if lock.note:
            logger.info(f"warning: {lock.note}")
        logger.info(f"{ctx.world_size} process(es) on {ctx.device.type}, arch {args.arch}")
        try:
            body(ctx, args, logger, run_dir)
        except UsageError:
            logger.close()
            lock.release()
            if ctx.is_main and not args.resume:
                remove_run_dir(run_dir)
            raise
        finally:
            logger.close()
    finally:
        lock.release()
        for s, handler in previous.items():
            signal.signal(s, handler)


def main_worker(ctx: DistContext, args: argparse.Namespace) -> None:
    if args.knn:
        run_worker(ctx, args, "kNN_log", "knn.log", knn_worker, trains=False)
    else:
        run_worker(ctx, args, "Finetune_log", "train.log", linear_worker, trains=not args.evaluate)


def train_and_validate(ctx: DistContext, args: argparse.Namespace, logger: RunLogger, run_dir: str, model: Module,
                       optimizer: torch.optim.Optimizer, train_set: Dataset, run: ClassifierRun, batch: int,
                       workers: int, loader_val: torch.utils.data.DataLoader) -> None:
    """The training part of lincls.py and finetune.py: DDP, the train loader, args.json, the epochs; exits with
    the stop code after a stop signal (checkpoint written). With a frozen BN no buffers are broadcast."""
    stop = StopRequest.installed()  # run_worker's: a signal that came during loading is kept
    if ctx.distributed:
        model = wrap_ddp(model, ctx.device, reproducible=args.seed is not None,
                         forward_sync_buffers=run.train_backbone)
    loader_train = train_loader(train_set, batch, workers, ctx, args.seed)
    logger.write_json("args.json", vars(args))
    if run.start_epoch >= run.epochs:
        logger.info(f"nothing to train: --resume {args.resume!r} is at epoch {run.start_epoch}, --epochs is "
                    f"{run.epochs}; pass a larger --epochs to train further")
    code = fit(model, optimizer, loader_train, loader_val, run, ctx, logger, run_dir, stop)
    if code is not None:
        raise SystemExit(code)


def linear_worker(ctx: DistContext, args: argparse.Namespace, logger: RunLogger, run_dir: str) -> None:
    batch, workers = per_process(args, ctx)
    train_set, val_set, classes = open_splits(args, with_train=not args.evaluate)
    model = linear_model(args.arch, len(classes))
    load_weights(model, args, logger)
    model.to(ctx.device)
    optimizer = torch.optim.SGD(trainable_parameters(model), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    pos = resume(model, optimizer, args, logger, None if args.evaluate else "linear") if args.resume else \
        {"start_epoch": args.start_epoch}
    reference = backbone_snapshot(model)
    loader_val = val_loader(val_set, batch, workers, ctx)
    logger.info(f"{len(classes)} classes, {len(val_set)} val images"
                + (f", {len(train_set)} train images" if train_set is not None else "")
                + f", batch {batch} per process")

    if args.evaluate:
        res = validate(model, loader_val, ctx.device, args.print_freq, logger.info)
        logger.write_json("evaluate.json", {**res, "epoch": args.start_epoch, "mode": "evaluate",
                                            "arch": args.arch, "checkpoint": args.resume or args.pretrained})
        return

    def lr_at(epoch: int) -> float:
        return linear_lr(args.lr, args.final_lr, epoch, args.epochs, args.cos, args.schedule)

    run = ClassifierRun("linear", args.arch, args.epochs, lr_at, False, args.print_freq, vars(args).copy(),
                        result={"pretrained": args.pretrained}, checkpoint={"mode": "linear"}, eval_freq=args.eval_freq,
                        **pos)
    train_and_validate(ctx, args, logger, run_dir, model, optimizer, train_set, run, batch, workers, loader_val)
    changed = changed_backbone_tensors(model, reference)
    if changed:
        raise RuntimeError(f"sanity check failed: {len(changed)} backbone tensors changed, e.g. {changed[:3]}")
    logger.info(f"=> sanity check passed: {len(reference)} backbone tensors (weights and BN statistics) unchanged")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_lincls_args(args)
    except UsageError as err:
        exit_usage(PROG, err)
    launch(main_worker, args, PROG)


if __name__ == "__main__":
    main()
