"""Fashion-MNIST for the demo and the reproduction: find (or install) the IDX files, carve subsets.

Subsets are written as small IDX folders (`train-*` and `t10k-*` files) that `data_processing.datasets.FashionMNIST`
reads like the original, so `main_clsa.py`, its kNN monitor and the evaluation all read real Fashion-MNIST images
through the project's own reader. A "split" folder's t10k files are either the real test split or a validation
split carved from train (for tuning; never the test split).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable

import numpy as np

from data_processing.datasets import read_idx
from ops.errors import UsageError
from ops.validate import FASHION_MNIST_DIR, FASHION_MNIST_FILES, has_fashion_mnist

ENV_VAR = "FASHION_MNIST_DIR"
INSTALL_HINT = ("install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or point "
                f"{ENV_VAR}=<folder> (or --data) at a folder holding "
                f"{', '.join(f + '.gz' for f in FASHION_MNIST_FILES)}")


def locate(root: str | None = None, install: bool = True, log: Callable[[str], None] = print) -> str:
    """The Fashion-MNIST folder: `root`, else $FASHION_MNIST_DIR, else the Debian package's folder.

    When the package's folder is missing and `install` is set, runs `apt-get install -y dataset-fashion-mnist`
    as root (after `apt-get update` if the first try fails). Raises UsageError with one line saying how to get it.
    """
    explicit = root or os.environ.get(ENV_VAR, "")
    if explicit:
        if not has_fashion_mnist(explicit):
            raise UsageError(f"Fashion-MNIST not found in {explicit!r}; {INSTALL_HINT}")
        return explicit
    if has_fashion_mnist(FASHION_MNIST_DIR):
        return FASHION_MNIST_DIR
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        log("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")
        for cmd in (["apt-get", "install", "-y", "dataset-fashion-mnist"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "dataset-fashion-mnist"]):
            ok = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
            if ok and cmd[1] == "install":
                break
        if has_fashion_mnist(FASHION_MNIST_DIR):
            return FASHION_MNIST_DIR
    raise UsageError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; {INSTALL_HINT}")


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array of 1 or 3 dimensions as an IDX file (gzipped when `path` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise ValueError(f"IDX writer: expected 1 or 3 dimensions, got {array.shape}")
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    tmp = path + ".tmp"
    with (gzip.open(tmp, "wb", compresslevel=1) if path.endswith(".gz") else open(tmp, "wb")) as f:
        f.write(header + array.tobytes())
    os.replace(tmp, path)


def _find(root: str, stem: str) -> str:
    gz = os.path.join(root, stem + ".gz")
    return gz if os.path.isfile(gz) else os.path.join(root, stem)


def load_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images n x 28 x 28 uint8, labels n uint8) of 'train' or 't10k'."""
    return read_idx(_find(root, f"{split}-images-idx3-ubyte")), read_idx(_find(root, f"{split}-labels-idx1-ubyte"))


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None
               ) -> np.ndarray:
    """`n` indices (sorted) with classes as balanced as `labels` allows, drawn without those in `exclude`."""
    pool = np.setdiff1d(np.arange(len(labels)), exclude) if exclude is not None else np.arange(len(labels))
    if n >= len(pool):
        return pool
    classes = np.unique(labels[pool])
    picked = []
    for i, c in enumerate(classes):
        members = rng.permutation(pool[labels[pool] == c])
        share = n // len(classes) + (1 if i < n % len(classes) else 0)
        picked.append(members[:share])
    return np.sort(np.concatenate(picked))


def write_split_folder(folder: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
                       ) -> str:
    """Write `folder`/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from (images, labels) pairs."""
    os.makedirs(folder, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    return folder


def carve(source: str, out: str, pretrain: int, bank: int, queries: int, seed: int = 0, validation: int = 0,
          monitor: int = 0, monitor_bank: int = 0, finetune: bool = False) -> dict[str, str]:
    """Subset folders under `out` from the Fashion-MNIST folder `source` (class-balanced draws, seeded).

    - `pretrain/`: train = `pretrain` images of the train split (pretraining reads only train);
    - `eval/`: train = `bank` train images (kNN bank, linear-probe training set), t10k = `queries` test images;
    - with `monitor` > 0, `monitor/`: `monitor_bank` of the bank images (0: all), t10k = `monitor` of the test
      images (a smaller, cheaper set for the per-epoch kNN monitor);
    - with `validation` > 0, `val/`: the same bank, t10k = `validation` train images that neither pretraining nor
      the bank uses (for tuning: the test split is not read);
    - with `finetune`, `finetune/`: train = the whole train split (finetune.py draws its labelled few from it),
      t10k = the same `queries` test images as `eval/`.
    A size of 0 (or more than available) takes the whole split. Returns the folders by role.
    """
    rng = np.random.default_rng(seed)
    (xtr, ytr), (xte, yte) = load_split(source, "train"), load_split(source, "t10k")
    held = stratified(ytr, validation, rng) if validation else np.array([], dtype=np.int64)
    pre = stratified(ytr, pretrain or len(ytr), rng, exclude=held)
    bnk = stratified(ytr, bank or len(ytr), rng, exclude=held)
    qry = stratified(yte, queries or len(yte), rng)
    folders = {"pretrain": write_split_folder(os.path.join(out, "pretrain"), (xtr[pre], ytr[pre]),
                                              (xtr[pre[:1]], ytr[pre[:1]])),
               "eval": write_split_folder(os.path.join(out, "eval"), (xtr[bnk], ytr[bnk]), (xte[qry], yte[qry]))}
    if monitor:
        mon = qry[stratified(yte[qry], monitor, rng)]
        mbk = bnk[stratified(ytr[bnk], monitor_bank or len(bnk), rng)]
        folders["monitor"] = write_split_folder(os.path.join(out, "monitor"), (xtr[mbk], ytr[mbk]),
                                                (xte[mon], yte[mon]))
    if finetune:
        folders["finetune"] = write_split_folder(os.path.join(out, "finetune"), (xtr, ytr), (xte[qry], yte[qry]))
    if validation:
        folders["val"] = write_split_folder(os.path.join(out, "val"), (xtr[bnk], ytr[bnk]),
                                            (xtr[held], ytr[held]))
    return folders
