"""Command-line flags of `finetune.py`: fine-tuning every layer of a pretrained encoder with few labels.

Defaults follow SimCLR's semi-supervised protocol (Chen et al. 2020, appendix B.5): SGD with Nesterov momentum 0.9,
no weight decay, RandomResizedCrop + horizontal flip only, batch 4096 with lr 0.05 x batch / 256 = 0.8, no warmup,
60 epochs for 1 % of the labels and 30 for 10 %; the lr decays by a cosine to 0, stepped per epoch. Flags are
hyphenated like lincls.py's and share its data, launch and crop flags (ops/lincls_argparser.py); the new ones also
accept underscores (--train_subset, --label_fraction, --subset_seed, --random_init).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ops.argparser import add_launch_flags, add_trust_flag
from ops.errors import UsageError
from ops.lincls_argparser import add_crop_flags, add_data_flags, add_optimisation_flags, check_classifier_args

FEW_LABELS = 0.05  # --epochs default: a subset of at most this fraction of the split is the protocol's "1 %" case
EPOCHS_FEW, EPOCHS_MORE = 60, 30  # SimCLR: 60 epochs with 1 % of the labels, 30 with 10 %
LR_BATCH = 256  # --lr-scaling linear: lr = --lr x global batch / LR_BATCH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune.py",
        description="Fine-tune every layer of a pretrained encoder (or a random-init baseline) with a new fc on all "
                    "or part of the labels (SimCLR's semi-supervised protocol); BatchNorm in train mode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_flags(p, "encoder to start from: CLSA/MoCo checkpoint (module.encoder_q.*), torchvision state_dict, "
                      "export_backbone.py file or lincls.py checkpoint (its fc is dropped); read weights-only",
                   "Semisup_log")
    g = add_optimisation_flags(
        p, "optimisation (every layer; SimCLR's semi-supervised protocol)", None,
        f"total epochs E; default: {EPOCHS_FEW} when the labelled images are at most {FEW_LABELS * 100:g} %% of the "
        f"train split (the protocol's 1 %% setting), else {EPOCHS_MORE} (its 10 %% setting)", 4096, 0.05,
        f"base learning rate for a global batch of {LR_BATCH}; with --lr-scaling linear the SGD lr is "
        f"lr x global batch / {LR_BATCH} (0.05 x 4096 / 256 = 0.8, SimCLR's)", 0.0,
        "finetune.py checkpoint to continue from (its directory is reused; the same subset flags are required)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed python/numpy/torch in every process, and each training image's augmentation by "
                        "(seed, epoch, index): a resumed run ends with the same weights as an uninterrupted one")
    g.add_argument("--nesterov", type=int, choices=(0, 1), default=1, help="1: Nesterov momentum")
    g.add_argument("--lr-scaling", choices=("linear", "none"), default="linear",
                   help=f"linear: SGD lr = --lr x global batch / {LR_BATCH}; none: SGD lr = --lr")

    g = p.add_argument_group("encoder and labelled subset")
    g.add_argument("--random-init", "--random_init", dest="random_init", action="store_true",
                   help="start from a randomly initialised backbone (the baseline) instead of --pretrained")
    g.add_argument("--train-subset", "--train_subset", dest="train_subset", type=str, default="",
                   help="file with one training image name per line (the standard ImageNet lists, e.g. "
                        "subsets/imagenet/1percent.txt): a bare file name matches that file in any class folder, "
                        "<class>/<file> the path under train/; FashionMNIST: indices 0..59999 of the train images")
    g.add_argument("--label-fraction", "--label_fraction", dest="label_fraction", type=float, default=None,
                   help="train on a class-balanced draw: in every class, round(F x its images) (half up, at "
                        "least 1) images chosen with --subset-seed; in (0, 1]")
    g.add_argument("--subset-seed", "--subset_seed", dest="subset_seed", type=int, default=0,
                   help="seed of the --label-fraction draw (recorded in finetune.json with the names' sha256)")

    add_launch_flags(p, sep="-", world_size=1, rank=0)
    g = p.add_argument_group("images and checkpoints")
    add_crop_flags(g)
    add_trust_flag(g)
    return p


def check_finetune_args(args: argparse.Namespace) -> None:
    """All checks that need no process group; each raises UsageError naming the flag or file."""
    if args.train_subset and args.label_fraction is not None:
        raise UsageError("--train-subset and --label-fraction are two ways to choose the labelled images; "
                         "pass one of them")
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        raise UsageError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.train_subset and not os.path.isfile(args.train_subset):
        raise UsageError(f"--train-subset {args.train_subset!r}: no such file")
    if args.nesterov and args.momentum <= 0:
        raise UsageError(f"--nesterov 1 needs --momentum > 0, got {args.momentum}; pass --nesterov 0 for plain SGD")
    if args.pretrained and args.random_init:
        raise UsageError("--pretrained and --random-init exclude each other: pass one of them")
    if not (args.pretrained or args.random_init or args.resume):
        raise UsageError("pass --pretrained CHECKPOINT to fine-tune an encoder, or --random-init for the "
                         "random-initialisation baseline")
    check_classifier_args(args, build_parser(), needs_train=True)


def default_epochs(labelled: int, split: int) -> int:
    """--epochs when not given: the protocol's 60 for a subset of at most FEW_LABELS of the split, else 30."""
    return EPOCHS_FEW if labelled <= FEW_LABELS * split else EPOCHS_MORE


def scaled_lr(base_lr: float, global_batch: int, scaling: str) -> float:
    """The SGD learning rate: base_lr x global_batch / LR_BATCH for 'linear', base_lr for 'none'."""
    return base_lr * global_batch / LR_BATCH if scaling == "linear" else base_lr


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:])."""
    return build_parser().parse_args(argv)
