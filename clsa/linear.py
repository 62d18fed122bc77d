"""Classifier heads trained by SGD with a per-epoch schedule: the linear probe (a new fc on a frozen backbone in
eval mode, BN statistics fixed) and full fine-tuning (the same new fc, every layer trained, BN in train mode).

`lincls.py` and `finetune.py` share all of it through clsa/classifier_run.py: the models, the head initialisation,
the per-epoch learning rate, one training epoch, and an exact validation in which every image of the validation
split is counted once, whatever the number of processes. `VOC_CLF/main.py` (multi-label, masked binary
cross-entropy) shares the head initialisation and the schedule. The L-BFGS logistic probe of `experiments/probe.py`
is a different method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from clsa.builder import backbone
from clsa.distributed import all_reduce_sum, unwrap
from clsa.faults import StopRequest, agree_to_stop
from clsa.metrics import topk_accuracy
from ops.runlog import AverageMeter, progress_line


def linear_model(arch: str, num_classes: int) -> nn.Module:
    """torchvision `arch` with every parameter frozen except fc, fc initialised N(0, 0.01) with zero bias."""
    model = backbone(arch, num_classes)
    for name, p in model.named_parameters():
        p.requires_grad = name in ("fc.weight", "fc.bias")
    init_head(model.fc)
    return model


def finetune_model(arch: str, num_classes: int) -> nn.Module:
    """torchvision `arch` with a new fc (initialised as `linear_model`'s) and every parameter trainable."""
    model = backbone(arch, num_classes)
    init_head(model.fc)
    return model


def init_head(head: nn.Linear) -> nn.Linear:
    """Weights N(0, 0.01), zero bias (the 2021 linear heads)."""
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Exactly the two tensors of fc (asserted)."""
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    if len(params) != 2:
        raise RuntimeError(f"linear evaluation must train fc.weight and fc.bias only, found {len(params)} tensors")
    return params


def linear_lr(lr: float, final_lr: float, epoch: int, epochs: int, cos: int, schedule: Iterable[int]) -> float:
    """lr of 0-based `epoch` of a linear head. --cos 1: final_lr + (1 + cos(pi e / E)) / 2 * (lr - final_lr);
    --cos 0: lr * 0.1 per milestone passed."""
    if cos:
        return final_lr + 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * (lr - final_lr)
    return lr * 0.1 ** sum(epoch >= m for m in schedule)


def backbone_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of every backbone tensor (parameters and BN buffers), fc excluded."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items() if not k.startswith("fc.")}


def changed_backbone_tensors(model: nn.Module, reference: dict[str, torch.Tensor]) -> list[str]:
    """Names of backbone tensors that differ from `reference` (a sanity check that the probe froze the backbone)."""
    state = unwrap(model).state_dict()
    return [k for k, v in reference.items() if not torch.equal(state[k].detach().cpu(), v)]


def _meters(names: tuple[str, ...]) -> dict[str, AverageMeter]:
    fmts = {"Time": ":6.3f", "Data": ":6.3f", "Loss": ":.4e", "Acc@1": ":6.2f", "Acc@5": ":6.2f"}
    return {n: AverageMeter(n, fmts[n]) for n in names}


def train_classifier_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, epoch: int,
                           device: torch.device, print_freq: int, log: Callable[[str], None],
                           stop: StopRequest | None = None, train_backbone: bool = False, start_iter: int = 0
                           ) -> dict:
    """One epoch of cross-entropy, from batch `start_iter` (a resumed epoch). `train_backbone` False (linear
    probe): the model stays in eval mode, so BN running statistics stay those of the pretrained encoder; True
    (fine-tuning): train mode, BN normalises with batch statistics and updates its running ones.

    Batches are (images, target) or RobustViews' (images, target, skipped names). In train mode a batch of one
    image is left out (BN cannot normalise a 1 x 1 map of one sample; every rank's last batch has the same size, so
    all of them leave it out together). Returns the local means,
    `stopped_at` (the batch to continue from when a stop signal ended the epoch early, every process agreeing on
    it; None when the epoch ran to its end) and `skipped` (unreadable files replaced by other images)."""
    criterion = nn.CrossEntropyLoss()
    meters = _meters(("Time", "Data", "Loss", "Acc@1", "Acc@5"))
    model.train(train_backbone)
    n_iters = start_iter + len(loader)
    stopped_at, skipped = None, []
    end = time.time()
    for i, batch in enumerate(loader, start=start_iter):
        images, target = batch[0], batch[1]
        if len(batch) > 2:
            skipped += [s for s in batch[2] if s]
        if train_backbone and images.shape[0] < 2:
            continue
        meters["Data"].update(time.time() - end)
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(images)
        loss = criterion(output, target)
        c1, c5 = topk_accuracy(output, target, counts=True)
        n = images.shape[0]
        meters["Loss"].update(loss.item(), n)
        meters["Acc@1"].update(100.0 * c1 / n, n)
        meters["Acc@5"].update(100.0 * c5 / n, n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meters["Time"].update(time.time() - end)
        end = time.time()
        stopped = agree_to_stop(stop.signum is not None, device) if stop else False
        if i % print_freq == 0 or i == n_iters - 1 or stopped:
            log(progress_line(f"Epoch: [{epoch}]", i, n_iters, list(meters.values())))
        if stopped and i < n_iters - 1:  # at the last batch the epoch is complete: the caller stops after it
            stopped_at = i + 1
            break
    return {"loss": meters["Loss"].avg, "acc1": meters["Acc@1"].avg, "acc5": meters["Acc@5"].avg,
            "stopped_at": stopped_at, "skipped": skipped}


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device, print_freq: int,
             log: Callable[[str], None]) -> dict[str, float]:
    """Exact top-1 / top-5 over the whole validation split.

    `loader` holds this rank's shard (`rank::world`, no padding); correct counts, loss sums and image counts are
    summed over ranks with all_reduce, so each image counts exactly once. The wrapped module is called directly
    (no DDP collectives), so shards of unequal length are fine.
    """
    net = unwrap(model)
    net.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    meters = _meters(("Time", "Loss", "Acc@1", "Acc@5"))
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, images
    n_iters = len(loader)
    end = time.time()
    for i, (images, target) in enumerate(loader):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = net(images)
        loss = criterion(output, target)
        c1, c5 = topk_accuracy(output, target, counts=True)
        n = images.shape[0]
        totals += torch.tensor([c1, c5, loss.item(), n], dtype=torch.float64, device=device)
        meters["Loss"].update(loss.item() / n, n)
        meters["Acc@1"].update(100.0 * c1 / n, n)
        meters["Acc@5"].update(100.0 * c5 / n, n)
        meters["Time"].update(time.time() - end)
        end = time.time()
        if i % print_freq == 0 or i == n_iters - 1:
            log(progress_line("Test: ", i, n_iters, list(meters.values())))
    all_reduce_sum(totals)
    c1, c5, loss_sum, count = totals.tolist()
    count = max(count, 1.0)
    result = {"top1": 100.0 * c1 / count, "top5": 100.0 * c5 / count, "loss": loss_sum / count,
              "images": int(count)}
    log(f" * Acc@1 {result['top1']:.3f} Acc@5 {result['top5']:.3f}")
    return result
