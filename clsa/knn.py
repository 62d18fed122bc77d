"""Weighted k-nearest-neighbour evaluation of a frozen encoder (the InstDisc rule, as in MoCo-style kNN monitors).

Features are the L2-normalised pooled outputs of the backbone (`clsa.evaluation.extract_features`). For a query q
the k most similar bank features (cosine similarity s_i) vote for their class with weight exp(s_i / t):

    score_c(q) = sum_{i in top-k(q)} exp(s_i / t) [y_i = c]

The bank is a labelled training split, the queries a validation split; the caller builds both datasets (e.g.
`data_processing.datasets.labelled_splits`). Under torch.distributed every rank extracts its shard of each split
and the shards are gathered, so every rank computes the same accuracy; each image is used exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from clsa.distributed import unwrap
from clsa.evaluation import extract_features
from clsa.metrics import topk_accuracy


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
    correct1 = correct5 = 0
    for start in range(0, features.shape[0], chunk):
        scores = knn_predict(features[start:start + chunk], bank, bank_labels, num_classes, k, t)
        c1, c5 = topk_accuracy(scores, labels[start:start + chunk], (1, 5), counts=True)
        correct1, correct5 = correct1 + c1, correct5 + c5
    n = max(features.shape[0], 1)
    return 100.0 * correct1 / n, 100.0 * correct5 / n


class KNNMonitor:
    """kNN top-1 of an encoder: bank `bank_set`, queries `query_set` (datasets of (image, class index) with the
    same `classes`, read with an evaluation transform such as `clsa.evaluation.eval_transform`).

    Called with the CLSA model (possibly DDP-wrapped: f_q = unwrap(model).encoder_q) or with a plain backbone.
    Every rank must call it; it restores the model's train/eval modes.
    """

    def __init__(self, bank_set: Dataset, query_set: Dataset, k: int = 200, t: float = 0.1, workers: int = 0,
                 log: Callable[[str], None] = print, batch_size: int = 256) -> None:
        self.bank_set, self.query_set = bank_set, query_set
        self.num_classes = len(bank_set.classes)
        self.k, self.t, self.workers, self.log, self.batch_size = k, t, workers, log, batch_size
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
