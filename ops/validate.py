"""Checks that run before any work starts. Each raises `UsageError` with one line naming the flag or file."""

from __future__ import annotations

import argparse
import os

from ops.argparser import RESNET_ARCHS
from ops.errors import UsageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_image_folder(root: str, flag: str = "--data", split: str = "train") -> str:
    """Return `<root>/<split>` if it holds class folders with at least one image, else raise."""
    folder = os.path.join(root, split)
    if not os.path.isdir(root):
        raise UsageError(f"{flag} {root!r} does not exist; give a folder holding {split}/<class>/<image files>")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {root!r} has no '{split}/' folder; expected {folder}/<class>/<image files>")
    for _dirpath, _dirs, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return folder
    raise UsageError(f"{flag}: no images ({', '.join(IMG_EXTENSIONS)}) under {folder}/<class>/")


def check_resume(path: str, flag: str = "--resume") -> None:
    if path and path != "auto" and not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r}: no such checkpoint file")


def check_views(args: argparse.Namespace) -> int:
    """Validate the crop lists and pick indices; return the number of crops n = sum(nmb_crops)."""
    lists = {"--nmb_crops": args.nmb_crops, "--size_crops": args.size_crops,
             "--min_scale_crops": args.min_scale_crops, "--max_scale_crops": args.max_scale_crops}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        got = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise UsageError(f"crop lists must have equal length ({got})")
    if any(c < 1 for c in args.nmb_crops):
        raise UsageError("--nmb_crops: every entry must be >= 1")
    if any(s < 1 for s in args.size_crops):
        raise UsageError("--size_crops: every entry must be >= 1 px")
    for lo, hi in zip(args.min_scale_crops, args.max_scale_crops, strict=True):
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"--min_scale_crops/--max_scale_crops: need 0 < min <= max <= 1, got ({lo}, {hi})")
    n = sum(args.nmb_crops)
    for flag, picks in (("--pick_weak", args.pick_weak), ("--pick_strong", args.pick_strong)):
        bad = [i for i in picks if not 0 <= i < n]
        if bad:
            raise UsageError(f"{flag} {bad}: indices must be in 0..{n - 1} (sum of --nmb_crops is {n})")
    return n


def check_pretrain_args(args: argparse.Namespace) -> None:
    """All checks of `main_clsa.py` that need no process group."""
    if args.arch not in RESNET_ARCHS:
        raise UsageError(f"--arch {args.arch!r} is not supported; choose one of: {', '.join(RESNET_ARCHS)}")
    check_views(args)
    for flag, value in (("--epochs", args.epochs), ("--batch_size", args.batch_size), ("--moco_k", args.moco_k),
                        ("--moco_dim", args.moco_dim), ("--cpu_procs", args.cpu_procs),
                        ("--print_freq", args.print_freq), ("--knn_freq", args.knn_freq)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--workers", args.workers), ("--warmup_iters", args.warmup_iters)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if not 0 <= args.moco_m <= 1:
        raise UsageError(f"--moco_m must be in [0, 1], got {args.moco_m}")
    if args.moco_t <= 0 or args.clsa_t <= 0:
        raise UsageError("--moco_t and --clsa_t must be > 0")
    if args.sym not in (0, 1):
        raise UsageError(f"--sym must be 0 or 1, got {args.sym}")
    check_resume(args.resume)
    if args.resume == "auto" and not args.run_dir:
        raise UsageError("--resume auto needs --run_dir (the run directory to continue or start)")
    if args.dataset.lower() != "fashionmnist":
        check_image_folder(args.data)
    if args.knn_data and args.dataset.lower() != "fashionmnist":  # FashionMNIST: its IDX train/test files
        check_image_folder(args.knn_data, "--knn_data", "train")
        check_image_folder(args.knn_data, "--knn_data", "val")


def check_batch(batch_per_node: int, procs_per_node: int, world: int, moco_k: int, dataset_len: int | None) -> int:
    """Return the per-process batch; raise if the global batch does not fit the queue or the data."""
    if batch_per_node < procs_per_node:
        raise UsageError(f"--batch_size {batch_per_node} is smaller than the {procs_per_node} processes per node")
    per_proc = batch_per_node // procs_per_node
    global_batch = per_proc * world
    if moco_k % global_batch:
        raise UsageError(f"--moco_k {moco_k} must be a multiple of the global batch {global_batch} "
                         f"({per_proc} per process x {world} processes)")
    if dataset_len is not None and dataset_len < global_batch:
        raise UsageError(f"--data has {dataset_len} training images, fewer than the global batch {global_batch}")
    return per_proc
