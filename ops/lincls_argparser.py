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
    check_resume(args.resume)
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
