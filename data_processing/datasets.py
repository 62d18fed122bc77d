"""Datasets: ImageFolder for real users, Fashion-MNIST (IDX files) for the offline demo."""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Callable
from typing import IO

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder as TorchvisionImageFolder

from ops.errors import UsageError
from ops.folders import image_files

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class ImageTooLarge(OSError):
    """A header that claims more pixels than PIL's `Image.MAX_IMAGE_PIXELS`: a decompression bomb (a tiny file that
    decodes to gigabytes). An OSError, so it is skipped and reported like any unreadable file."""


def open_image(fp: str | IO[bytes]) -> Image.Image:
    """`PIL.Image.open` (the header only), raising ImageTooLarge where PIL would raise DecompressionBombError or,
    between 1x and 2x its limit, only warn and then decode the whole image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageTooLarge(str(err)) from None


def read_rgb(path: str) -> Image.Image:
    """torchvision's PIL loader (the same pixels), refusing decompression bombs (ImageTooLarge)."""
    with open(path, "rb") as f:
        return open_image(f).convert("RGB")


def _open_maybe_gz(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): images (n, h, w) uint8 or labels (n,) uint8."""
    with _open_maybe_gz(path) as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise UsageError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise UsageError(f"{path}: truncated IDX file ({arr.size} bytes of data, expected {int(np.prod(dims))})")
    return arr.reshape(dims)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise UsageError(f"Fashion-MNIST file {stem}(.gz) not found in {root!r}; "
                     "install it with 'apt-get install dataset-fashion-mnist' or point the data folder at a copy")


class ImageFolder(TorchvisionImageFolder):
    """torchvision's ImageFolder with the same samples in the same order, scanned by `ops.folders.image_files`: a link
    back into a folder already read raises `ops.folders.FolderLoop` instead of being followed until the kernel's
    link limit (which repeated that class's images once per level)."""

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False
                     ) -> list[tuple[str, int]]:
        if extensions is None or is_valid_file is not None:
            return TorchvisionImageFolder.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)
        samples, empty = [], []
        for name in sorted(class_to_idx):
            files = image_files(os.path.join(directory, name), extensions)
            samples += [(path, class_to_idx[name]) for path in files]
            if not files:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"no image files ({', '.join(extensions)}) in the class folder(s) "
                                    f"{', '.join(os.path.join(directory, n) for n in empty)}")
        return samples


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files as 3-channel 28 x 28 PIL images. split: 'train' (60k) or 'test' (10k)."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str, split: str = "train", transform: Callable | None = None,
                 indices: np.ndarray | None = None) -> None:
        prefix = {"train": "train", "test": "t10k", "val": "t10k"}[split]
        self.images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        self.targets = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise UsageError(f"Fashion-MNIST in {root!r}: {len(self.images)} images but {len(self.targets)} labels")
        if indices is not None:
            self.images, self.targets = self.images[indices], self.targets[indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i]).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


def build_dataset(name: str, root: str, split: str, transform: Callable | None, loader: Callable | None = None,
                  allow_empty: bool = False) -> Dataset:
    """'FashionMNIST' reads the IDX files in `root`; anything else is ImageFolder(<root>/<split>), its files read
    by `loader` (default: `read_rgb`, PIL without decompression bombs; --views gpu: the bytes only). `allow_empty`:
    keep class folders without images (as classes with no samples) instead of an error, for callers that report
    them themselves.

    `root` is used as given (the entry scripts resolve --data defaults: ops.validate.resolve_fashion_mnist)."""
    if name.lower() == "fashionmnist":
        return FashionMNIST(root, split, transform)
    return ImageFolder(os.path.join(root, split), transform=transform, loader=loader or read_rgb,
                       allow_empty=allow_empty)


def labelled_splits(name: str, root: str, transform: Callable | None) -> tuple[Dataset, Dataset]:
    """(train, val) of `root` with the same classes, e.g. the bank and queries of a kNN evaluation.

    A `root` with a train/ folder is read as ImageFolders train/ and val/ whatever `name` is; otherwise as
    `build_dataset(name, ...)`."""
    if os.path.isdir(os.path.join(root, "train")):
        name = "ImageFolder"  # a labelled train/ + val/ folder, whatever the pretraining --dataset
    train, val = build_dataset(name, root, "train", transform), build_dataset(name, root, "val", transform)
    if list(train.classes) != list(val.classes):
        raise UsageError(f"{root!r}: train/ and val/ have different class folders "
                         f"({len(train.classes)} vs {len(val.classes)})")
    return train, val
