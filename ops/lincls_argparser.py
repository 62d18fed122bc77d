"""Command-line flags of `lincls.py` (linear evaluation and kNN evaluation of a frozen encoder), and the flag groups
and checks it shares with `finetune.py` (ops/finetune_argparser.py).

The 2021 flags that did something keep their hyphenated names and defaults (MoCo style), so the seed README's
`python3 lincls.py --data=... --dist-url=tcp://localhost:10001 --pretrained=[path]` runs verbatim. Additions are
grouped at the end of `--help`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ops.argparser import RESNET_ARCHS, add_launch_flags, add_trust_flag
from ops.errors import UsageError
from ops.ranges import check_ranges
from ops.validate import check_arch, check_image_folder, check_output_dir, check_resume, resolve_fashion_mnist


def add_data_flags(p: argparse.ArgumentParser, pretrained_help: str, run_kind: str) -> argparse._ArgumentGroup:
    """--data, --dataset, -a, -j, --pretrained, --log_path, --save_path (run dir <save_path>/<log_path>/<run_kind>)."""
    g = p.add_argument_group("data, model and run directory")
    g.add_argument("--data", type=str, default="",
                   help="root with train/ and val/ class folders (FashionMNIST: the folder of its IDX files)")
    g.add_argument("--dataset", type=str, default="ImageNet",
                   help="ImageNet (any ImageFolder root) or FashionMNIST")
    g.add_argument("-a", "--arch", type=str, default="resnet50", help="backbone: " + ", ".join(RESNET_ARCHS))
    g.add_argument("-j", "--workers", type=int, default=32, help="data-loader workers per node")
    g.add_argument("--pretrained", type=str, default="", help=pretrained_help)
    g.add_argument("--log_path", type=str, default="train_log", help="run directory component")
    g.add_argument("--save_path", type=str, default="",
                   help=f"run directory base: <save_path>/<log_path>/{run_kind}/<stamp>")
    return g


def add_optimisation_flags(p: argparse.ArgumentParser, title: str, epochs: int | None, epochs_help: str,
                           batch: int, lr: float, lr_help: str, final_lr: float, resume_help: str
                           ) -> argparse._ArgumentGroup:
    """Epochs, batch, SGD and its per-epoch schedule, printing, --resume and --seed, with the given defaults."""
    g = p.add_argument_group(title)
    g.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    g.add_argument("--start-epoch", type=int, default=0, help="first epoch (overwritten by --resume)")
    g.add_argument("-b", "--batch-size", type=int, default=batch, help="batch size per node (split across processes)")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=lr, help=lr_help)
    g.add_argument("--schedule", type=int, nargs="*", default=[15, 25, 30],
                   help="with --cos 0: multiply the lr by 0.1 at these epochs")
    g.add_argument("--cos", type=int, default=1,
                   help="1: lr(e) = final_lr + (1 + cos(pi e/E))/2 (lr - final_lr) per epoch; 0: --schedule steps")
    g.add_argument("--final_lr", type=float, default=final_lr, help="floor of the cosine schedule")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.0, help="SGD weight decay")
    g.add_argument("-p", "--print-freq", type=int, default=10, help="print every N iterations")
    g.add_argument("--eval-freq", "--eval_freq", dest="eval_freq", type=int, default=1,
                   help="validate after every N-th epoch and after the last (0: after the last only); the result "
                        "file and model_best follow the validated epochs")
    g.add_argument("--resume", type=str, default="", help=resume_help)
    return g


def add_crop_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--train-crop", type=int, default=224, help="RandomResizedCrop size for training")
    g.add_argument("--val-resize", type=int, default=256, help="Resize (shorter side) before the centre crop")
    g.add_argument("--val-crop", type=int, default=224, help="CenterCrop size for validation (and lincls.py --knn)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lincls.py",
        description="Linear classification (or weighted kNN) on the frozen query encoder of a CLSA checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_flags(p, "CLSA/MoCo checkpoint (module.encoder_q.*), torchvision state_dict, or (with -e) a "
                      "lincls.py checkpoint; empty: randomly initialised backbone", "Finetune_log")
    g = add_optimisation_flags(p, "optimisation (of the linear classifier only)", 100, "total epochs E", 256, 10.0,
                               "initial learning rate", 0.01,
                               "lincls.py checkpoint to continue from (its directory is reused)")
    g.add_argument("-e", "--evaluate", action="store_true",
                   help="only validate a linear checkpoint (--resume, or --pretrained of a lincls.py checkpoint)")
    g.add_argument("--seed", type=int, default=None, help="seed python/numpy/torch in every process and worker")

    add_launch_flags(p, sep="-", world_size=1, rank=0)

    g = p.add_argument_group("additions (not in the 2021 code)")
    add_crop_flags(g)
    g.add_argument("--knn", action="store_true",
                   help="weighted kNN evaluation instead of linear training (bank: train/, queries: val/)")
    g.add_argument("--knn-k", type=int, default=200, help="neighbours k of the kNN rule")
    g.add_argument("--knn-t", type=float, default=0.1, help="temperature t of the kNN weights exp(s/t)")
    add_trust_flag(g)
    return p


def check_classifier_args(args: argparse.Namespace, parser: argparse.ArgumentParser, needs_train: bool,
                          image_folder_wins: bool = False) -> None:
    """The checks lincls.py and finetune.py share (`parser`: the script's, for the one range table of
    ops/ranges.py); each raises UsageError naming the flag or file. For --dataset FashionMNIST, resolves args.data
    to the folder of the IDX files."""
    check_ranges(parser, args)  # every numeric flag, from the one table in ops/ranges.py
    check_arch(args.arch)
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise UsageError(f"--pretrained {args.pretrained!r}: no such checkpoint file")
    check_resume(args.resume, auto=False)
    if not args.resume:  # --resume FILE continues in FILE's folder
        check_output_dir(args.save_path or ".", "--save_path")
        check_output_dir(os.path.join(args.save_path, args.log_path), "--log_path")
    if args.dataset.lower() == "fashionmnist":
        args.data = resolve_fashion_mnist(args.data, image_folder_wins=image_folder_wins)
        return
    if not args.data:
        raise UsageError("--data is required: a folder holding train/<class>/ and val/<class>/ images")
    if needs_train:
        check_image_folder(args.data, "--data", "train")
    check_image_folder(args.data, "--data", "val")


def check_lincls_args(args: argparse.Namespace) -> None:
    """All checks that need no process group; each raises UsageError naming the flag or file."""
    if args.evaluate and args.knn:
        raise UsageError("-e/--evaluate and --knn are two different evaluations; pass one of them")
    if args.evaluate and not (args.resume or args.pretrained):
        raise UsageError("-e/--evaluate needs a linear checkpoint: --resume <checkpoint_last.pth.tar> or --pretrained")
    check_classifier_args(args, build_parser(), needs_train=not args.evaluate,
                          image_folder_wins=args.knn)  # --knn: clsa.knn


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:])."""
    return build_parser().parse_args(argv)
