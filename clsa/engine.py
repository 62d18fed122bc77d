"""The pretraining loop. One iteration, in reading order: set the lr, forward the views through the model
(clsa/builder.py: encoders, queue, the loss of clsa/losses.py), agree across processes on a stop request and on a
finite loss (clsa/step_checks.py), backward, SGD step, enqueue the keys, log."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from clsa.distributed import unwrap
from clsa.faults import StopRequest
from clsa.step_checks import Agreement, DeviceMeans, StepFlags, guarded_step
from data_processing.view_plan import ViewPlan
from ops.launch import DistContext
from ops.runlog import AverageMeter, RunLogger, format_duration, progress_line


def learning_rate(base_lr: float, epoch: float, epochs: int, cos: int, step: int = 0, warmup_iters: int = 0
                  ) -> float:
    """The learning rate at (fractional) epoch e = epoch + i/I of E, global iteration `step`.

    --cos 1: lr (1 + cos(pi floor(e) / E)) / 2 and --cos 2: lr cos(pi floor(e) / (2E)), both set once per epoch as
    in 2021; --cos 3: lr (1 + cos(pi e / E)) / 2 per iteration; anything else: constant. With warmup_iters W > 0
    the value is scaled by (step + 1) / W during the first W iterations (linear warmup).
    """
    if cos == 1:
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * math.floor(epoch) / epochs))
    elif cos == 2:
        lr = base_lr * math.cos(math.pi * math.floor(epoch) / (2 * epochs))
    elif cos == 3:
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    else:
        lr = base_lr
    if warmup_iters > 0 and step < warmup_iters:
        lr *= (step + 1) / warmup_iters
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops before the bad step touches the weights."""


@dataclass(frozen=True)
class LoopConfig:
    """Everything an epoch needs besides model, data, optimizer and process context.

    `lr_at(fractional epoch, global iteration)` gives each iteration's lr; `max_iters` > 0 ends an epoch early;
    `check_lag` 1 reads each iteration's stop / non-finite agreement one iteration late (clsa/step_checks.py);
    `start_iter`: the batch the (resumed) epoch starts at."""
    plan: ViewPlan
    lr_at: Callable[[float, int], float]
    steps_per_epoch: int
    print_freq: int = 10
    max_iters: int = 0
    amp: bool = False
    skip_nonfinite: bool = False
    check_lag: int = 0
    start_iter: int = 0

    @property
    def iterations(self) -> int:
        return min(self.steps_per_epoch, self.max_iters) if self.max_iters else self.steps_per_epoch


def train_one_epoch(model: nn.Module, batches: DeviceBatches, optimizer: torch.optim.Optimizer, epoch: int,
                    cfg: LoopConfig, ctx: DistContext, logger: RunLogger, stop: StopRequest | None = None) -> dict:
    """Train one epoch from batch cfg.start_iter. Returns the epoch means (loss, infonce, ddm, acc1, acc5,
    img_per_s, seconds), `stopped_at` (the next batch when a stop signal ended the epoch early, else None) and
    `skipped_files` (unreadable images this process replaced)."""
    model.train()
    flags, log = StepFlags(cfg.check_lag), EpochLog(logger, epoch, cfg, ctx.world_size, unwrap(model).objective)
    stopped_at = None
    for i, views in batches.epoch(epoch, cfg.start_iter, log):
        if i >= cfg.iterations:
            break
        set_learning_rate(optimizer, cfg.lr_at(epoch + i / cfg.steps_per_epoch, epoch * cfg.steps_per_epoch + i))
        with autocast(views[0].device, cfg.amp):
            loss, stats, keys = model(*cfg.plan.split(views))
        finite = flags.push(i, stop is not None and stop.signum is not None, loss)
        report = flags.pop()  # check_lag 0: this iteration's agreement; 1: the previous one's (or None)
        stop_now = report is not None and _act_on(report, epoch, cfg.skip_nonfinite, logger)
        keep = finite if cfg.check_lag else None  # deferred: the device keeps or undoes the update
        if keep is None and not report.finite:  # skipped (--skip_nonfinite): no update, not counted
            log.skip()
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step() if keep is None else guarded_step(optimizer, keep)
        unwrap(model).dequeue_and_enqueue(keys, keep)
        log.step(i, views[0].shape[0], loss, stats, keep, optimizer, stop_now)
        if stop_now and i + 1 < cfg.iterations:
            stopped_at = i + 1
            break
    for report in flags.flush():  # the last iteration's agreement (check_lag 1); a stop then waits for the epoch end
        _act_on(report, epoch, cfg.skip_nonfinite, logger)
    return log.summary(stopped_at)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast of the encoders on CPU and CUDA when `enabled` (the loss itself runs in float32)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _act_on(a: Agreement, epoch: int, skip_nonfinite: bool, logger: RunLogger) -> bool:
    """Raise on a non-finite loss (or log the skip under --skip_nonfinite); True when a stop was agreed."""
    if not a.finite:
        if not skip_nonfinite:
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch} iteration {a.iteration}")
        logger.info(f"warning: non-finite loss at epoch {epoch} iteration {a.iteration}; step skipped "
                    "(skip_nonfinite)")
    return a.stop


class DeviceBatches:
    """The loader's batches as [key, weak..., strong...] on `device`: moved there (views built by the loader
    workers), or decoded and built there by `make_views(batch, epoch, iteration)` (--views gpu)."""

    def __init__(self, loader: Iterable, device: torch.device,
                 make_views: Callable[[object, int, int], tuple[list[torch.Tensor], list[str]]] | None = None):
        self.loader, self.device, self.make_views = loader, device, make_views

    def epoch(self, epoch: int, start_iter: int, log: EpochLog) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """(iteration, views) from batch `start_iter`; tells `log` when data arrived and which files were skipped."""
        for i, (views, _, skipped) in enumerate(self.loader, start=start_iter):
            log.data_arrived()
            if self.make_views is None:
                views, undecodable = [v.to(self.device, non_blocking=True) for v in views], []
            else:
                views, undecodable = self.make_views(views, epoch, i)
            log.skipped([f for entry in skipped if entry for f in entry.split("|")] + undecodable)
            yield i, views


# The step statistics the loop prints: name -> (label, format). loss first; the others are the objective's stats.
STATS = {"loss": ("Loss", ":.4e"), "infonce": ("InfoNCE", ":.4e"), "ddm": ("DDM", ":.4e"),
         "acc1": ("Acc@1", ":6.2f"), "acc5": ("Acc@5", ":6.2f")}


class EpochLog:
    """Timers, device-side running means, progress lines and TensorBoard scalars of one epoch."""

    def __init__(self, logger: RunLogger, epoch: int, cfg: LoopConfig, world_size: int, objective) -> None:
        self.logger, self.epoch, self.cfg, self.world_size = logger, epoch, cfg, world_size
        self.labels = dict(STATS, ddm=(objective.strong_label, STATS["ddm"][1]))
        self.timers = {k: AverageMeter(n, ":6.3f") for k, n in (("time", "Time"), ("data", "Data"))}
        self.means = DeviceMeans(list(STATS))
        self.start = self.end = time.time()
        self.images, self.skipped_files = 0, []

    def data_arrived(self) -> None:
        self.timers["data"].update(time.time() - self.end)

    def skipped(self, names: list[str]) -> None:
        for name in names:
            self.skipped_files.append(name)
            self.logger.info(f"warning: skipped unreadable image {name}")

    def skip(self) -> None:
        self.end = time.time()

    def step(self, i: int, n: int, loss: torch.Tensor, stats: dict, keep: torch.Tensor | None,
             optimizer: torch.optim.Optimizer, force: bool) -> None:
        """Count iteration i (n images per process; `keep` false: not in the means) and print when due."""
        self.means.update([loss, *(stats[k] for k in list(STATS)[1:])], n, keep)
        self.images += n * self.world_size
        self.timers["time"].update(time.time() - self.end)
        self.end = time.time()
        if self.epoch == 0 and i == 0:
            self.logger.info("-" * 100)
            self.logger.info(f"contrastive loss count {int(stats['n_infonce'])}\tweak strong loss count "
                             f"{int(stats['n_ddm'])}")
        n_iters = self.cfg.iterations
        if i % self.cfg.print_freq == 0 or i == n_iters - 1 or force:
            last, avg = self.means.read()
            rate = self.images / max(self.end - self.start, 1e-9)
            eta = (n_iters - i - 1) * self.timers["time"].avg
            shown = [self.timers["time"], self.timers["data"]] + [_meter(self.labels[k], last[k], avg[k])
                                                                  for k in STATS]
            self.logger.info(progress_line(f"Epoch: [{self.epoch}]", i, n_iters, shown,
                                           f"img/s {rate:7.1f}\tETA {format_duration(eta)}"))
            step = self.epoch * self.cfg.steps_per_epoch + i  # one counter for the lr schedule and TensorBoard
            self.logger.scalars({**{f"train/{k}": last[k] for k in STATS}, "train/img_per_s": rate,
                                 "train/lr": optimizer.param_groups[0]["lr"]}, step)

    def summary(self, stopped_at: int | None) -> dict:
        elapsed = time.time() - self.start
        out: dict = self.means.read()[1]
        out.update(img_per_s=self.images / max(elapsed, 1e-9), seconds=elapsed, stopped_at=stopped_at,
                   skipped_files=self.skipped_files)
        return out


def _meter(label_fmt: tuple[str, str], last: float, avg: float) -> AverageMeter:
    meter = AverageMeter(*label_fmt)
    meter.val, meter.sum, meter.count = last, avg, 1
    return meter
