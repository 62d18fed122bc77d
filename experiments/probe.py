"""Frozen-encoder evaluation on cached features: weighted kNN and a linear probe (multinomial logistic regression).

Both read the Fashion-MNIST IDX splits of a folder (`train` = bank / probe training set, `t10k` = queries) with the
kNN monitor's eval transform (`eval_sets`), and the pooled 512-d (resnet18) features of the backbone in eval mode
(`clsa.evaluation.extract_features`). The linear probe is a different method from lincls.py's linear classifier
(clsa/linear.py: SGD over augmented images for many epochs): full-batch L-BFGS on standardised cached features,
its weight decay chosen on a held-out tenth of the training features (never on the queries), then refit on all.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from clsa.builder import backbone
from clsa.evaluation import eval_transform, extract_features
from clsa.knn import knn_accuracy
from clsa.metrics import topk_accuracy
from clsa.pretrained import load_encoder_weights
from data_processing.datasets import labelled_splits

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)


def load_encoder(arch: str, checkpoint: str | None, seed: int = 0) -> nn.Module:
    """torchvision `arch` with the query encoder of `checkpoint`, or randomly initialised (seeded) when None."""
    torch.manual_seed(seed)
    model = backbone(arch)
    if checkpoint:
        load_encoder_weights(model, checkpoint)
    return model


def eval_sets(folder: str, size: int) -> tuple[Dataset, Dataset]:
    """(train, test) Fashion-MNIST splits of the IDX files in `folder`, read with `eval_transform(size)`."""
    return labelled_splits("FashionMNIST", folder, eval_transform(size))


def features(encoder: nn.Module, bank: Dataset, queries: Dataset, batch: int = 256, workers: int = 0
             ) -> dict[str, torch.Tensor]:
    """L2-normalised features and labels on the CPU: train_x/train_y of `bank`, test_x/test_y of `queries`."""
    out = {}
    for split, dataset in (("train", bank), ("test", queries)):
        f, y = extract_features(encoder, dataset, batch, workers)
        out[f"{split}_x"], out[f"{split}_y"] = f.cpu(), y.cpu().long()
    return out


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, iters: int = 100
                 ) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS with an L2 penalty on the weights."""
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True) + 1e-6
    return (train - mean) / std, (test - mean) / std


@torch.no_grad()
def _score(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """The probe's top-1 in percent (clsa.metrics.topk_accuracy)."""
    with torch.no_grad():
        return topk_accuracy(head(x), y, (1,))[0]


def linear_probe(feats: dict[str, torch.Tensor], classes: int) -> dict[str, float]:
    """Top-1 of a linear classifier on standardised features; weight decay picked on a held-out train tenth."""
    x, y = feats["train_x"], feats["train_y"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(y) // 10)
    held, fit = order[:cut], order[cut:]
    xf, xh = _standardise(x[fit], x[held])
    scores = {wd: _score(fit_logistic(xf, y[fit], classes, wd), xh, y[held]) for wd in WEIGHT_DECAYS}
    wd = max(scores, key=lambda k: (scores[k], k))
    xtr, xte = _standardise(x, feats["test_x"])
    head = fit_logistic(xtr, y, classes, wd)
    return {"top1": _score(head, xte, feats["test_y"]), "weight_decay": wd,
            "holdout_top1": scores[wd], "train_top1": _score(head, xtr, y)}


def evaluate(encoder: nn.Module, bank: Dataset, queries: Dataset, k: int = 200, t: float = 0.1, classes: int = 10,
             workers: int = 0) -> dict[str, float]:
    """kNN top-1/top-5 and linear-probe top-1 of `encoder` (bank: kNN bank and probe training set); plus sizes
    and seconds."""
    start = time.time()
    feats = features(encoder, bank, queries, workers=workers)
    knn1, knn5 = knn_accuracy(feats["test_x"], feats["test_y"], feats["train_x"], feats["train_y"], classes, k, t)
    lin = linear_probe(feats, classes)
    return {"knn_top1": knn1, "knn_top5": knn5, "linear_top1": lin["top1"], "linear_weight_decay": lin["weight_decay"],
            "linear_holdout_top1": lin["holdout_top1"], "bank": int(len(feats["train_y"])),
            "queries": int(len(feats["test_y"])), "seconds": time.time() - start, "k": k, "t": t}
