"""Tiny Fashion-MNIST-shaped IDX folders for tests (written by hand, independent of the code under test)."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000080N, N big-endian dimensions, then the data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_tiny_fmnist(root: str, n_train: int = 100, n_test: int = 40, gz: bool = True, seed: int = 0) -> str:
    """`root`/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]: 28x28 images whose bright bar position encodes
    the label (labels cycle 0..9), plus noise."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 50, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y:6 + 2 * y, 4:24] = 230
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            path = os.path.join(root, f"{prefix}-{kind}-ubyte")
            data = idx_bytes(arr)
            if gz:
                with gzip.open(path + ".gz", "wb") as f:
                    f.write(data)
            else:
                with open(path, "wb") as f:
                    f.write(data)
    return root
