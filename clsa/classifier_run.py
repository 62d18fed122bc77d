"""The classifier training run shared by `lincls.py` (linear probe) and `finetune.py` (every layer): the loaders, the
epoch loop (per-epoch lr, one training epoch, exact validation, `<mode>.json`, TensorBoard scalars, checkpoints) and
what a stop signal does.

Checkpoints are `checkpoint_last.pth.tar` after every epoch and at a stop signal (SIGTERM/SIGUSR1/SIGINT, agreed by
every process at the end of an iteration), with `epoch` and `iteration` saying where to continue; a resumed run
goes on from that batch. With a seed, each training image's augmentation is drawn from (seed, epoch, index)
(data_processing.sampling.RobustViews) and the sampler order from (seed, epoch), so a resumed run trains on exactly
the batches an uninterrupted one would and ends with the same weights. The entry scripts turn their flags into a
`ClassifierRun`; nothing here reads flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from clsa.checkpoint import prefixed_state_dict, save_run_state
from clsa.distributed import broadcast_buffers
from clsa.engine import set_learning_rate
from clsa.evaluation import shard_indices
from clsa.faults import StopRequest, agree_to_stop
from clsa.linear import train_classifier_epoch, validate
from data_processing.sampling import EpochSampler, RobustViews
from ops.environment import loader_worker_init
from ops.launch import DistContext
from ops.runlog import RunLogger, format_duration

SHOW_SKIPPED = 3


@dataclass
class ClassifierRun:
    """What the epoch loop needs, in plain values."""
    mode: str  # "linear" or "finetune": names the result file <mode>.json and the TensorBoard tags <mode>/*
    arch: str
    epochs: int
    lr_at: Callable[[int], float]  # the learning rate of a 0-based epoch
    train_backbone: bool  # False: eval mode throughout (linear probe); True: train mode, BN statistics move
    print_freq: int
    args: dict[str, Any]  # the flags, stored in every checkpoint
    result: dict[str, Any] = field(default_factory=dict)  # added to every <mode>.json
    checkpoint: dict[str, Any] = field(default_factory=dict)  # added to every checkpoint
    start_epoch: int = 0
    start_iter: int = 0  # the batch of start_epoch to continue from (a run stopped mid-epoch)
    best_acc1: float = 0.0
    best_epoch: int | None = None
    eval_freq: int = 1  # validate after every eval_freq-th epoch and after the last (0: after the last only)

    def validates_after(self, epoch: int) -> bool:
        """Whether the 0-based `epoch` ends with a validation."""
        return epoch + 1 == self.epochs or (self.eval_freq > 0 and (epoch + 1) % self.eval_freq == 0)


def loader_kwargs(workers: int, ctx: DistContext) -> dict[str, Any]:
    return {"num_workers": workers, "pin_memory": ctx.device.type == "cuda", "persistent_workers": workers > 0}


def val_loader(val_set: Dataset, batch: int, workers: int, ctx: DistContext) -> DataLoader:
    """This rank's shard rank::world of the validation split, in order (no padding, no shuffling)."""
    shard = Subset(val_set, shard_indices(len(val_set), ctx.rank, ctx.world_size))
    return DataLoader(shard, batch_size=batch, shuffle=False, worker_init_fn=loader_worker_init,
                      **loader_kwargs(workers, ctx))


def train_loader(train_set: Dataset, batch: int, workers: int, ctx: DistContext, seed: int | None) -> DataLoader:
    """Shuffled by (seed, epoch) across ranks, no sample dropped (the last batch may be short); with a seed every
    image's augmentation is seeded by (seed, epoch, index); unreadable files are replaced and reported."""
    dataset = RobustViews(train_set, seed)
    sampler = EpochSampler(dataset, ctx.world_size, ctx.rank, seed or 0, batch, drop_last=False)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, worker_init_fn=loader_worker_init,
                      **loader_kwargs(workers, ctx))


def save_classifier(model: nn.Module, optimizer: torch.optim.Optimizer, run: ClassifierRun, run_dir: str,
                    epoch: int, iteration: int, best_acc1: float, best_epoch: int | None, is_best: bool) -> str:
    """Every process calls; rank 0 writes checkpoint_last.pth.tar (and model_best.pth.tar when `is_best`).
    `epoch`, `iteration`: where to continue. The best top-1 is stored as main_clsa.py's `best_acc` and under the
    2021 MoCo name `best_acc1` that other tools read."""
    state = {"epoch": epoch, "iteration": iteration, "arch": run.arch, "state_dict": prefixed_state_dict(model),
             "best_acc": best_acc1, "best_acc1": best_acc1, "best_epoch": best_epoch,
             "optimizer": optimizer.state_dict(), "args": dict(run.args), **run.checkpoint}
    return save_run_state(state, run_dir, epoch - 1 if iteration == 0 else epoch, is_best)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, loader_train: DataLoader, loader_val: DataLoader,
        run: ClassifierRun, ctx: DistContext, logger: RunLogger, run_dir: str, stop: StopRequest) -> int | None:
    """Train epochs run.start_epoch .. run.epochs - 1, validating exactly after those `run.validates_after`;
    returns None when done, or the exit code of a stop signal once its checkpoint is written."""
    sampler: EpochSampler = loader_train.sampler
    best_acc1, best_epoch, start_iter = run.best_acc1, run.best_epoch, run.start_iter
    for epoch in range(run.start_epoch, run.epochs):
        sampler.set_epoch(epoch)
        sampler.start_batch = start_iter
        lr = run.lr_at(epoch)
        set_learning_rate(optimizer, lr)
        start = time.time()
        train = train_classifier_epoch(model, loader_train, optimizer, epoch, ctx.device, run.print_freq,
                                       logger.info, stop, run.train_backbone, start_iter)
        start_iter = 0
        if train["skipped"]:
            logger.info(f"epoch {epoch}: {len(train['skipped'])} unreadable training images were replaced by the "
                        f"next readable ones on this process: {', '.join(train['skipped'][:SHOW_SKIPPED])}")
        if train["stopped_at"] is not None:
            path = save_classifier(model, optimizer, run, run_dir, epoch, train["stopped_at"], best_acc1,
                                   best_epoch, False)
            logger.info(f"{stop.name}: saved {path}; resumed from it, epoch {epoch} continues at batch "
                        f"{train['stopped_at']}")
            return stop.exit_code
        broadcast_buffers(model)  # every rank validates (and rank 0 saves) rank 0's BN statistics
        is_best = False
        if not run.validates_after(epoch):
            when = f"every {run.eval_freq} epochs and after the last" if run.eval_freq else "after the last epoch"
            logger.info(f"epoch {epoch} done in {format_duration(time.time() - start)}: lr {lr:.4g} "
                        f"train loss {train['loss']:.4f} (validation {when})")
            logger.scalars({f"{run.mode}/train_loss": train["loss"], f"{run.mode}/lr": lr}, epoch)
        else:
            res = validate(model, loader_val, ctx.device, run.print_freq, logger.info)
            is_best = res["top1"] > best_acc1
            best_acc1 = max(res["top1"], best_acc1)
            best_epoch = epoch if is_best else best_epoch
            logger.info(f"epoch {epoch} done in {format_duration(time.time() - start)}: lr {lr:.4g} "
                        f"train loss {train['loss']:.4f} Acc@1 {res['top1']:.3f} (best {best_acc1:.3f})")
            logger.scalars({f"{run.mode}/train_loss": train["loss"], f"{run.mode}/val_top1": res["top1"],
                            f"{run.mode}/val_top5": res["top5"], f"{run.mode}/lr": lr}, epoch)
            logger.write_json(f"{run.mode}.json", {"top1": res["top1"], "top5": res["top5"], "epoch": epoch + 1,
                                                   "best_acc1": best_acc1, "best_epoch": best_epoch,
                                                   "loss": res["loss"], "images": res["images"], "mode": run.mode,
                                                   "arch": run.arch, **run.result})
        path = save_classifier(model, optimizer, run, run_dir, epoch + 1, 0, best_acc1, best_epoch, is_best)
        if epoch + 1 < run.epochs and agree_to_stop(stop.signum is not None, ctx.device):
            logger.info(f"{stop.name}: saved {path}; stopping after epoch {epoch}, resume from it to continue")
            return stop.exit_code
    return None
