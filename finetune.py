#!/usr/bin/env python3
"""Fine-tune every layer of a pretrained encoder with all or few labels (SimCLR's semi-supervised protocol).

    python3 finetune.py --data=<root with train/ and val/> --pretrained=<ckpt> --train-subset=<list file>
    python3 finetune.py --data=<root> --pretrained=<ckpt> --label-fraction 0.1 --subset-seed 0
    python3 finetune.py --data=<root> --random-init --label-fraction 0.01           # the random-init baseline

The encoder is loaded exactly as `lincls.py --pretrained` loads it (clsa/pretrained.py, weights only), a new fc is
added, and all layers train with BatchNorm in train mode (SGD, Nesterov momentum, no weight decay by default). The
launch, run directory, checkpoints (SIGTERM/SIGUSR1 -> checkpoint_last.pth.tar, exit 75, --resume), logging,
TensorBoard and the exact DDP validation are lincls.py's (clsa/classifier_run.py and lincls.py's helpers).
`finetune.json` holds the result, the subset and how it was chosen, and the flags; `train_subset.txt` lists the
labelled images (a valid --train-subset file).
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector
from ops.stop_signals import exit_on_stop_signals

if __name__ in ("__main__", "__mp_main__"):  # first of all, before torch's slow import (spawned workers too)
    pause_collector()
    exit_on_stop_signals("finetune.py")
if __name__ == "__main__":  # --help and malformed flags answer here, before torch's import (seconds on a CPU)
    from ops.finetune_argparser import parse_args as _parse_early

    _parse_early()

import argparse
import os
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Subset

from clsa.classifier_run import ClassifierRun, val_loader
from clsa.linear import finetune_model, linear_lr
from data_processing.subsets import (
    LabelSubset,
    SubsetError,
    check_every_class,
    class_counts,
    label_subset,
    sample_targets,
)
from lincls import load_weights, open_splits, per_process, resume, run_worker, train_and_validate
from ops.atomic import atomic_write
from ops.errors import UsageError, exit_usage
from ops.finetune_argparser import check_finetune_args, default_epochs, parse_args, scaled_lr
from ops.launch import DistContext, launch
from ops.runlog import RunLogger

if __name__ in ("__main__", "__mp_main__"):
    imports_done()  # see ops/startup.py

PROG = "finetune.py"
SUBSET_FILE = "train_subset.txt"


def choose_subset(args: argparse.Namespace, train_set: Dataset, classes: list[str]) -> LabelSubset:
    """The labelled training images of --train-subset, --label-fraction or (neither) the whole split; a class
    without images in the split, or left without images by the subset, is refused."""
    split = "the FashionMNIST train split" if args.dataset.lower() == "fashionmnist" else \
        repr(os.path.join(args.data, "train"))
    try:
        check_every_class(class_counts(sample_targets(train_set), len(classes)), classes, split)
    except SubsetError as err:
        raise UsageError(f"--data {args.data!r}: {err}") from None
    try:
        return label_subset(train_set, classes, args.train_subset, args.label_fraction, args.subset_seed, split)
    except SubsetError as err:
        flag = f"--train-subset {args.train_subset!r}" if args.train_subset else "--label-fraction"
        raise UsageError(f"{flag}: {err}") from None


def resume_check(subset: LabelSubset, args: argparse.Namespace, started: dict) -> Callable[[dict], None]:
    """A --resume check: the checkpoint was trained on exactly these labelled images. Keeps the flags the run was
    started with in `started` (its encoder: a resumed command need not repeat --pretrained)."""
    def check(ckpt: dict) -> None:
        saved = (ckpt.get("subset") or {}).get("names_sha256")
        if saved != subset.names_sha256:
            raise UsageError(f"--resume {args.resume!r} was trained on another labelled subset "
                             f"({(ckpt.get('subset') or {}).get('images', '?')} images, this run: "
                             f"{len(subset.indices)}); pass the subset flags it was started with")
        started.update(ckpt.get("args") or {})
    return check


def finetune_worker(ctx: DistContext, args: argparse.Namespace, logger: RunLogger, run_dir: str) -> None:
    batch, workers = per_process(args, ctx)
    train_set, val_set, classes = open_splits(args, with_train=True, allow_empty=True)
    subset = choose_subset(args, train_set, classes)
    epochs = args.epochs or default_epochs(len(subset.indices), subset.split_size)
    global_batch = batch * ctx.world_size
    lr = scaled_lr(args.lr, global_batch, args.lr_scaling)

    model = finetune_model(args.arch, len(classes))
    load_weights(model, args, logger)
    model.to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=args.momentum, nesterov=bool(args.nesterov),
                                weight_decay=args.weight_decay)
    started = {"pretrained": args.pretrained}
    pos = resume(model, optimizer, args, logger, "finetune", resume_check(subset, args, started)) if args.resume \
        else {"start_epoch": args.start_epoch}

    record = {**subset.record(), "names_file": SUBSET_FILE}
    if ctx.is_main:
        atomic_write(os.path.join(run_dir, SUBSET_FILE), lambda f: f.write(subset.names_text().encode()))
    logger.info(f"{len(classes)} classes, {len(val_set)} val images, {len(subset.indices)} of {subset.split_size} "
                f"train images labelled ({_describe(subset)}; {min(subset.per_class)}-{max(subset.per_class)} per "
                f"class), batch {batch} per process (global {global_batch})")
    rule = f"--lr {args.lr} x {global_batch}/256" if args.lr_scaling == "linear" else "--lr as given"
    logger.info(f"{epochs} epochs{'' if args.epochs else ' (the protocol default for this subset size)'}, SGD lr "
                f"{lr:.4g} ({rule}), nesterov {bool(args.nesterov)}, momentum {args.momentum}, weight decay "
                f"{args.weight_decay}")
    if global_batch > len(subset.indices):
        logger.info(f"note: the global batch {global_batch} exceeds the {len(subset.indices)} labelled images: "
                    f"every step sees the whole subset, and the lr was still scaled by {global_batch}/256")

    def lr_at(epoch: int) -> float:
        return linear_lr(lr, args.final_lr, epoch, epochs, args.cos, args.schedule)

    pretrained = started.get("pretrained") or None
    result = {"pretrained": pretrained, "init": "pretrained" if pretrained else "random",
              "epochs": epochs, "lr": lr, "base_lr": args.lr, "lr_scaling": args.lr_scaling,
              "global_batch": global_batch, "train_images": len(subset.indices), "subset": record,
              "args": vars(args).copy()}
    run = ClassifierRun("finetune", args.arch, epochs, lr_at, True, args.print_freq, vars(args).copy(), result,
                        {"mode": "finetune", "subset": record}, eval_freq=args.eval_freq, **pos)
    loader_val = val_loader(val_set, batch, workers, ctx)
    train_and_validate(ctx, args, logger, run_dir, model, optimizer, Subset(train_set, subset.indices), run, batch,
                       workers, loader_val)


def _describe(subset: LabelSubset) -> str:
    if subset.kind == "list":
        return f"list {subset.source['file']}"
    if subset.kind == "fraction":
        return f"class-balanced fraction {subset.source['fraction']}, seed {subset.source['seed']}"
    return "all labels"


def main_worker(ctx: DistContext, args: argparse.Namespace) -> None:
    run_worker(ctx, args, "Semisup_log", "train.log", finetune_worker, trains=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_finetune_args(args)
    except UsageError as err:
        exit_usage(PROG, err)
    launch(main_worker, args, PROG)


if __name__ == "__main__":
    main()
