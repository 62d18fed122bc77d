"""Checks that run before any work starts. Each raises `UsageError` with one line naming the flag or file.

The checks of the entry scripts also resolve flag defaults that depend on the data: for `--dataset FashionMNIST`,
`args.data` becomes the folder of the IDX files (`resolve_fashion_mnist`), so dataset code only ever gets a root.
"""

from __future__ import annotations

import argparse
import os
import shutil

from ops.argparser import DEFAULT_DATA, RESNET_ARCHS, build_parser
from ops.errors import UsageError
from ops.folders import IMG_EXTENSIONS, FolderLoop, class_names, image_files
from ops.ranges import check_ranges

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian/Ubuntu package dataset-fashion-mnist
FASHION_MNIST_FILES = tuple(f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


def has_fashion_mnist(root: str) -> bool:
    """True when `root` holds the four IDX files (gzipped or plain)."""
    return all(os.path.isfile(os.path.join(root, f + ".gz")) or os.path.isfile(os.path.join(root, f))
               for f in FASHION_MNIST_FILES)


def check_fashion_mnist(root: str, flag: str, prefixes: tuple[str, ...]) -> None:
    """`root` holds the IDX images and labels of each split prefix ('train', 't10k'), gzipped or plain."""
    missing = [f for f in FASHION_MNIST_FILES if f.split("-")[0] in prefixes
               and not any(os.path.isfile(os.path.join(root, f + ext)) for ext in (".gz", ""))]
    if missing:
        raise UsageError(f"{flag} {root!r}: no Fashion-MNIST file {missing[0]}(.gz); install the package "
                         f"dataset-fashion-mnist or point {flag} at a folder with the IDX files")


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


def check_image_folder(root: str, flag: str = "--data", split: str = "train") -> list[str]:
    """Return the class folders of `<root>/<split>` (sorted) when each holds at least one image and no link leads
    back into a folder already read (ops.folders); else raise naming the folder."""
    folder = os.path.join(root, split)
    if not os.path.isdir(root):
        raise UsageError(f"{flag} {root!r} does not exist; give a folder holding {split}/<class>/<image files>")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {root!r} has no '{split}/' folder; expected {folder}/<class>/<image files>")
    classes = class_names(folder)
    if not classes:
        raise UsageError(f"{flag}: no class folders in {folder}, so no images; expected {folder}/<class>/<image files>")
    for name in classes:
        try:
            files = image_files(os.path.join(folder, name))
        except FolderLoop as err:
            raise UsageError(f"{flag}: {err}") from None
        if not files:
            raise UsageError(f"{flag}: class folder {os.path.join(folder, name)} holds no images "
                             f"({', '.join(IMG_EXTENSIONS)}); add its images or remove it")
    return classes


def check_labelled_folder(root: str, flag: str) -> None:
    """`root` holds train/ and val/ image folders with the same classes (a kNN bank and its queries)."""
    train, val = check_image_folder(root, flag, "train"), check_image_folder(root, flag, "val")
    if train != val:
        raise UsageError(f"{flag} {root!r}: train/ and val/ have different class folders ({len(train)} vs {len(val)})")


def check_resume(path: str, flag: str = "--resume", auto: bool = True) -> None:
    """`path` is a checkpoint file, empty, or (where `auto`) 'auto'."""
    if path == "auto" and not auto:
        raise UsageError(f"{flag} auto is main_clsa.py's; here {flag} takes the checkpoint file to continue, "
                         "e.g. <run dir>/checkpoint_last.pth.tar")
    if path and path != "auto" and not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r}: no such checkpoint file")


def check_auto_resume(path: str) -> None:
    """--resume auto: the run's last checkpoint `path` is absent (a fresh start) or a file (or a link to one)."""
    if os.path.lexists(path) and not os.path.isfile(path):
        what = ("a directory" if os.path.isdir(path) else "a dangling link" if not os.path.exists(path)
                else "not a regular file")
        raise UsageError(f"--resume auto: {path} is {what}, not a checkpoint file; move it away (or restore what "
                         "it links to) and rerun")


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
    check_ranges(build_parser(), args)  # every numeric flag, from the one table in ops/ranges.py
    check_arch(args.arch)
    check_views(args)
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
    fashion = args.dataset.lower() == "fashionmnist"
    if fashion:
        args.data = resolve_fashion_mnist(args.data)
        check_fashion_mnist(args.data, "--data", ("train",))
    else:
        check_image_folder(args.data)
    if args.knn_data:  # the kNN monitor's bank (train) and queries (val; Fashion-MNIST: t10k), as clsa.knn reads them
        if fashion:
            args.knn_data = resolve_fashion_mnist(args.knn_data, image_folder_wins=True)
        if fashion and not os.path.isdir(os.path.join(args.knn_data, "train")):
            check_fashion_mnist(args.knn_data, "--knn_data", ("train", "t10k"))
        else:
            check_labelled_folder(args.knn_data, "--knn_data")


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
