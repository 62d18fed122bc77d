"""Seeded, resumable sampling and a dataset wrapper that tolerates unreadable files.

`EpochSampler` yields (epoch, index) keys in DistributedSampler order and can start at a batch inside the epoch.
`RobustViews` wraps a dataset: with a seed, each sample's augmentation RNGs are seeded from (seed, epoch, index),
so a resumed run sees exactly the views of an uninterrupted one whatever the worker layout; an unreadable file is
replaced by the next readable sample and reported instead of killing the epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# PIL: truncated, empty, not an image, or a decompression bomb (datasets.read_rgb raises ImageTooLarge, an OSError)
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError)


class UnreadableImage(RuntimeError):
    """Strict mode: an image that no decoder reads stops the run; the message names the file and the reason."""

    def line(self) -> str:
        """The message, also when a DataLoader worker re-raised it with the worker's traceback appended."""
        last = (str(self).strip().splitlines() or [""])[-1]
        prefix = f"{UnreadableImage.__module__}.{UnreadableImage.__qualname__}: "
        return last[len(prefix):] if last.startswith(prefix) else last


class EpochSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, index) and can skip the first `start_batch` batches once.

    drop_last (pretraining, whose DataLoader also drops a short last batch): the samples that do not fill every
    rank equally are dropped, and `batches_per_epoch` counts whole batches; without it (classifier training) a few
    samples are repeated to even out the ranks' shards, and the last batch may be short.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start_batch * self.batch_size:]
        self.start_batch = 0  # only the first epoch after a resume is partial
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_batch * self.batch_size, 0)

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class RobustViews(Dataset):
    """dataset[(epoch, index)] -> (views, target, skipped) where `skipped` names unreadable files ('|'-joined)."""

    def __init__(self, dataset: Dataset, seed: int | None, strict: bool = False) -> None:
        self.dataset, self.seed, self.strict = dataset, seed, strict

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        return samples[index][0] if samples is not None else f"sample {index}"

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.seed is not None:
            s = sample_seed(self.seed, epoch, index)
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
        skipped = []
        for attempt in range(min(len(self.dataset), 100)):
            i = (index + attempt) % len(self.dataset)
            try:
                views, target = self.dataset[i]
                return views, target, "|".join(skipped)
            except UNREADABLE as err:
                if self.strict:
                    raise UnreadableImage(f"unreadable image {self._path(i)}: {err}") from err
                skipped.append(self._path(i))
        raise RuntimeError(f"100 unreadable images in a row from {self._path(index)}; is the data folder intact?")


def shutdown_loader_workers(loader: DataLoader) -> None:
    """Stop the persistent loader workers now. Left to interpreter exit (a SystemExit whose traceback keeps the loader
    alive), multiprocessing would terminate them with SIGTERM, which they ignore (ops.environment), and wait forever:
    a 4-process run hung after its SIGTERM checkpoint that way."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
