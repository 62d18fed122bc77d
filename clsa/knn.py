"""Weighted k-nearest-neighbour evaluation of a frozen encoder (the InstDisc rule, as in MoCo-style kNN monitors).

Features are the L2-normalised pooled outputs of the backbone (fc replaced by Identity, eval mode). For a query q
the k most similar bank features (cosine similarity s_i) vote for their class with weight exp(s_i / t):

    score_c(q) = sum_{i in top-k(q)} exp(s_i / t) [y_i = c]

The bank is the labelled training split, the queries the validation split. Under torch.distributed every rank
extracts the shard `rank::world` of each split and the shards are gathered, so every rank holds the same bank and
computes the same accuracy; each image is used exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from clsa.checkpoint import unwrap
from clsa.distributed import concat_all_gather, get_rank, get_world_size
from data_processing.datasets import build_dataset
from data_processing.transforms import normalize
from ops.errors import UsageError


def knn_predict(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int,
                t: float) -> torch.Tensor:
    """Class scores (N x C) of N queries against a bank of M labelled features.

    features: N x D and bank: M x D, rows L2-normalised; bank_labels: M class indices in [0, C).
    k is capped at M. The weight of a neighbour with cosine similarity s is exp(s / t).
    """
    sim = features @ bank.t()
    top_sim, top_idx = sim.topk(min(k, bank.shape[0]), dim=1)
    weights = (top_sim / t).exp()
    scores = torch.zeros(features.shape[0], num_classes, dtype=weights.dtype, device=features.device)
    return scores.scatter_add_(1, bank_labels[top_idx], weights)


@torch.no_grad()
def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                 num_classes: int, k: int = 200, t: float = 0.1, chunk: int = 1024) -> tuple[float, float]:
    """(top-1, top-5) in percent of the weighted kNN rule; rows are L2-normalised here, queries in chunks.
    top-5 is capped at C classes."""
    features, bank = F.normalize(features.float(), dim=1), F.normalize(bank.float(), dim=1)
    bank_labels, labels = bank_labels.long(), labels.long()
    maxk = min(5, num_classes)
    correct1 = correct5 = 0
    for start in range(0, features.shape[0], chunk):
        scores = knn_predict(features[start:start + chunk], bank, bank_labels, num_classes, k, t)
        pred = scores.topk(maxk, dim=1).indices
        hit = pred.eq(labels[start:start + chunk, None])
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
    n = max(features.shape[0], 1)
    return 100.0 * correct1 / n, 100.0 * correct5 / n


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
def extract_features(encoder: nn.Module, dataset: Dataset, batch_size: int = 256, workers: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x D, L2-normalised float32; labels N) of the whole `dataset`, on every rank.

    Each rank encodes its shard `rank::world`; the shards are gathered in dataset order.
    """
    device = next(encoder.parameters()).device
    n, rank, world = len(dataset), get_rank(), get_world_size()
    indices = shard_indices(n, rank, world)
    loader = DataLoader(Subset(dataset, indices or [0]), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    feats, labels = [], []
    with pooled_features(encoder) as f:
        for images, targets in loader:
            out = f(images.to(device, non_blocking=True)).float().flatten(1)
            feats.append(F.normalize(out, dim=1))
            labels.append(torch.as_tensor(targets, device=device))
    local_f, local_y = torch.cat(feats)[:len(indices)], torch.cat(labels)[:len(indices)]
    return gather_shards(local_f, n), gather_shards(local_y, n)


def eval_transform(size: int, resize: int | None = None) -> T.Compose:
    """Resize(resize or size) + CenterCrop(size) + ImageNet normalisation (tiny square images: just a resize)."""
    return T.Compose([T.Resize(resize or size), T.CenterCrop(size), normalize()])


class KNNMonitor:
    """kNN top-1 of the query encoder f_q: bank `<knn_data>/train`, queries `<knn_data>/val`.

    `dataset` is the dataset name given to `build_dataset` ('FashionMNIST' uses its train/test IDX files), unless
    `knn_data` has a train/ folder: then train/ and val/ are read as ImageFolders.
    Called with the CLSA model (possibly DDP-wrapped: f_q = unwrap(model).encoder_q) or with a plain backbone.
    Every rank must call it; it restores the model's train/eval modes.
    """

    def __init__(self, knn_data: str, dataset: str, size: int, k: int = 200, t: float = 0.1, ctx: object = None,
                 workers: int = 0, log: Callable[[str], None] = print, resize: int | None = None,
                 batch_size: int = 256) -> None:
        transform = eval_transform(size, resize)
        if os.path.isdir(os.path.join(knn_data, "train")):
            dataset = "ImageFolder"  # a labelled train/ + val/ folder, whatever the pretraining --dataset
        self.bank_set = build_dataset(dataset, knn_data, "train", transform)
        self.query_set = build_dataset(dataset, knn_data, "val", transform)
        bank_classes, query_classes = list(self.bank_set.classes), list(self.query_set.classes)
        if bank_classes != query_classes:
            raise UsageError(f"{knn_data!r}: train/ and val/ have different class folders "
                             f"({len(bank_classes)} vs {len(query_classes)})")
        self.num_classes = len(bank_classes)
        self.k, self.t, self.workers, self.log, self.batch_size = k, t, workers, log, batch_size
        self.ctx = ctx
        self.last: dict[str, float] = {}

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """Extract bank and query features with `encoder` and return top1, top5 (percent), sizes and seconds."""
        start = time.time()
        bank, bank_labels = extract_features(encoder, self.bank_set, self.batch_size, self.workers)
        queries, labels = extract_features(encoder, self.query_set, self.batch_size, self.workers)
        top1, top5 = knn_accuracy(queries, labels, bank, bank_labels, self.num_classes, self.k, self.t)
        self.last = {"top1": top1, "top5": top5, "k": self.k, "t": self.t, "bank": len(self.bank_set),
                     "queries": len(self.query_set), "classes": self.num_classes, "seconds": time.time() - start}
        return self.last

    def __call__(self, model: nn.Module) -> float:
        inner = unwrap(model)
        res = self.evaluate(getattr(inner, "encoder_q", inner))
        self.log(f"kNN (k={self.k}, t={self.t}): Acc@1 {res['top1']:.2f} Acc@5 {res['top5']:.2f} "
                 f"on {res['queries']} queries, bank {res['bank']} ({res['seconds']:.1f}s)")
        return res["top1"]
