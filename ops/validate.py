"""Checks that run before any work starts. Each raises `UsageError` with one line naming the flag or file.

The checks of the entry scripts also resolve flag defaults that depend on the data: for `--dataset FashionMNIST`,
`args.data` becomes the folder of the IDX files (`resolve_fashion_mnist`), so dataset code only ever gets a root.
"""

from __future__ import annotations

import argparse
import os
import shutil

from ops.argparser import DEFAULT_DATA, RESNET_ARCHS
from ops.errors import UsageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian/Ubuntu package dataset-fashion-mnist
FASHION_MNIST_FILES = tuple(f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


def check_at_least(minimum: int, *flags: tuple[str, float]) -> None:
    """Refuse the first (flag, value) below `minimum`, naming the flag."""
    for flag, value in flags:
        if value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def has_fashion_mnist(root: str) -> bool:
    """True when `root` holds the four IDX files (gzipped or plain)."""
    return all(os.path.isfile(os.path.join(root, f + ".gz")) or os.path.isfile(os.path.join(root, f))
               for f in FASHION_MNIST_FILES)


def resolve_fashion_mnist(root: str, image_folder_wins: bool = False) -> str:
    """The folder of the IDX files that `--data` (or `--knn_data`) names for `--dataset FashionMNIST`.

    An empty value, or the --data default 'data' without the IDX files in it, means the Debian package's folder.
    With `image_folder_wins` (a kNN folder: one with train/ is read as an ImageFolder whatever --dataset says) a
    folder holding train/ is kept as given.
    """
    if image_folder_wins and os.path.isdir(os.path.join(root, "train")):
        return root
    if not root or (root == DEFAULT_DATA and not has_fashion_mnist(root)):
        return FASHION_MNIST_DIR
    return root


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


def check_output_file(out: str, flag: str, inputs: dict[str, str]) -> None:
    """Refuse an output path that is an existing folder, lies in no folder, or is the same file as one of `inputs`
    ({flag: path}), also through a symbolic or hard link: writing it would replace the input."""
    if os.path.isdir(out):
        raise UsageError(f"{flag} {out!r} is an existing folder; give the path of a file to write")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {out!r}: the folder {folder} does not exist")
    for name, path in inputs.items():
        if os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
            link = "" if os.path.abspath(out) == os.path.abspath(path) else " (through a link)"
            raise UsageError(f"{flag} {out!r} is the same file as {name} {path!r}{link}; writing it would replace "
                             f"the input: choose another {flag}")


def check_output_dir(path: str, flag: str) -> None:
    """Refuse a folder to write in when it, or the nearest part of it that exists, is not a folder."""
    part = os.path.abspath(path)
    while not os.path.lexists(part):
        part = os.path.dirname(part)
    if not os.path.isdir(part):
        where = "is" if part == os.path.abspath(path) else f"lies under {part!r}, which is"
        raise UsageError(f"{flag} {path!r} {where} a file, not a folder; give a folder to write the run in")


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


def check_arch(arch: str) -> None:
    """--arch must be one of RESNET_ARCHS (main_clsa.py, lincls.py, VOC_CLF/main.py)."""
    if arch not in RESNET_ARCHS:
        raise UsageError(f"--arch {arch!r} is not supported; choose one of: {', '.join(RESNET_ARCHS)}")


def check_pretrain_args(args: argparse.Namespace) -> None:
    """All checks of `main_clsa.py` that need no process group."""
    check_arch(args.arch)
    check_views(args)
    check_at_least(1, ("--epochs", args.epochs), ("--batch_size", args.batch_size), ("--moco_k", args.moco_k),
                   ("--moco_dim", args.moco_dim), ("--cpu_procs", args.cpu_procs),
                   ("--print_freq", args.print_freq), ("--knn_freq", args.knn_freq))
    check_at_least(0, ("--workers", args.workers), ("--warmup_iters", args.warmup_iters))
    if not 0 <= args.moco_m <= 1:
        raise UsageError(f"--moco_m must be in [0, 1], got {args.moco_m}")
    if args.moco_t <= 0 or args.clsa_t <= 0:
        raise UsageError("--moco_t and --clsa_t must be > 0")
    if args.sym not in (0, 1):
        raise UsageError(f"--sym must be 0 or 1, got {args.sym}")
    check_resume(args.resume)
    if args.run_dir:
        check_output_dir(args.run_dir, "--run_dir")
    elif not args.resume:  # --resume FILE continues in FILE's folder
        check_output_dir(args.log_path, "--log_path")
    if args.compile:
        check_compiler()
    if args.resume == "auto" and not args.run_dir:
        raise UsageError("--resume auto needs --run_dir (the run directory to continue or start)")
    if args.dataset.lower() != "fashionmnist":
        check_image_folder(args.data)
    if args.knn_data and args.dataset.lower() != "fashionmnist":  # FashionMNIST: its IDX train/test files
        check_image_folder(args.knn_data, "--knn_data", "train")
        check_image_folder(args.knn_data, "--knn_data", "val")
    if args.dataset.lower() == "fashionmnist":
        args.data = resolve_fashion_mnist(args.data)
        if args.knn_data:
            args.knn_data = resolve_fashion_mnist(args.knn_data, image_folder_wins=True)


def check_compiler() -> None:
    """--compile: inductor builds its kernels with the C/C++ compiler in $CXX, else g++, clang++ or cc on PATH."""
    names = [os.environ.get("CXX", ""), "g++", "clang++", "cc"]
    if not any(n and shutil.which(n) for n in names):
        raise UsageError("--compile needs a C/C++ compiler (torch.compile's inductor builds kernels with it): "
                         "install g++ or set CXX, or leave out --compile")


def check_batch(batch_per_node: int, procs_per_node: int, world: int, moco_k: int) -> int:
    """Return the per-process batch; raise if the global batch does not fit the queue (checked once, at launch)."""
    if batch_per_node < procs_per_node:
        raise UsageError(f"--batch_size {batch_per_node} is smaller than the {procs_per_node} processes per node")
    per_proc = batch_per_node // procs_per_node
    global_batch = per_proc * world
    if moco_k % global_batch:
        raise UsageError(f"--moco_k {moco_k} must be a multiple of the global batch {global_batch} "
                         f"({per_proc} per process x {world} processes)")
    return per_proc


def check_enough_images(dataset_len: int, global_batch: int) -> None:
    """Raise when the training set cannot fill one global batch (checked once the dataset is opened)."""
    if dataset_len < global_batch:
        raise UsageError(f"--data has {dataset_len} training images, fewer than the global batch {global_batch}")
