"""The evaluation kit shared by the kNN monitor, `lincls.py`, `VOC_CLF/` and `experiments/`.

- `eval_transform`: Resize + CenterCrop + ImageNet normalisation of frozen-feature evaluation;
- `extract_features`: pooled features of a frozen backbone (fc replaced by Identity, eval mode) over a whole
  dataset, sharded `rank::world` under torch.distributed (`shard_indices`, `gather_shards`) so that each image is
  encoded once and every rank ends with all rows in dataset order.

Linear heads and their schedule are in `clsa/linear.py`, the kNN rule in `clsa/knn.py`, the top-k metric in
`clsa/metrics.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from clsa.distributed import concat_all_gather, get_rank, get_world_size
from data_processing.transforms import normalize
from ops.environment import loader_worker_init


def eval_transform(size: int, resize: int | None = None) -> T.Compose:
    """Resize(resize or size) + CenterCrop(size) + ImageNet normalisation (tiny square images: just a resize)."""
    return T.Compose([T.Resize(resize or size), T.CenterCrop(size), normalize()])


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The images of one rank: rank, rank + world, ... (no padding, no shuffling: each image exactly once)."""
    return list(range(rank, n, world))


@torch.no_grad()
def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `shard_indices` across the process group: the n rows in dataset order, on every rank."""
    world = get_world_size()
    if world == 1:
        return local
    rows = -(-n // world)
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[:local.shape[0]] = local
    gathered = concat_all_gather(padded).view(world, rows, *local.shape[1:])
    out = local.new_empty((n, *local.shape[1:]))
    for r in range(world):
        out[r::world] = gathered[r, :len(range(r, n, world))]
    return out


@contextmanager
def pooled_features(encoder: nn.Module) -> Iterator[nn.Module]:
    """The encoder in eval mode with fc replaced by Identity; fc and every submodule's mode are restored after."""
    modes = [(m, m.training) for m in encoder.modules()]
    fc = encoder.fc
    encoder.fc = nn.Identity()
    encoder.eval()
    try:
        yield encoder
    finally:
        encoder.fc = fc
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, batch_size: int = 256, workers: int = 0,
                     l2_normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x D in float32, L2-normalised unless told not to; labels N or N x C) of the whole `dataset`,
    on the encoder's device and on every rank.

    Each rank encodes its shard `rank::world` in order; the shards are gathered in dataset order. A shard of one
    batch is read in this process (a worker process would only add its start-up), a longer one by at most one worker
    per batch.
    """
    device = next(encoder.parameters()).device
    n, rank, world = len(dataset), get_rank(), get_world_size()
    indices = shard_indices(n, rank, world)
    batches = math.ceil(max(len(indices), 1) / batch_size)
    loader = DataLoader(Subset(dataset, indices or [0]), batch_size=batch_size, shuffle=False,
                        num_workers=min(workers, batches) if batches > 1 else 0, pin_memory=device.type == "cuda",
                        worker_init_fn=loader_worker_init)
    feats, labels = [], []
    with pooled_features(encoder) as f:
        for images, targets in loader:
            out = f(images.to(device, non_blocking=True)).float().flatten(1)
            feats.append(F.normalize(out, dim=1) if l2_normalize else out)
            labels.append(torch.as_tensor(targets, device=device))
    local_f, local_y = torch.cat(feats)[:len(indices)], torch.cat(labels)[:len(indices)]
    return gather_shards(local_f, n), gather_shards(local_y, n)
