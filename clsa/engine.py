"""The pretraining loop: one epoch of CLSAStep iterations (clsa/step.py), with the learning-rate schedule, progress
lines and TensorBoard scalars, the non-finite check and the stop agreement between processes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from clsa import trace
from clsa.faults import StopRequest
from clsa.step import CLSAStep
from clsa.step_checks import Agreement, DeviceMeans, StepFlags
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


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, step: CLSAStep,
                    lr_at: Callable[[float, int], float], epoch: int, ctx: DistContext, logger: RunLogger,
                    steps_per_epoch: int, start_iter: int = 0, stop: StopRequest | None = None, max_iters: int = 0,
                    print_freq: int = 10, skip_nonfinite: bool = False,
                    make_views: Callable[[object, int, int], tuple[list[torch.Tensor], list[str]]] | None = None,
                    check_lag: int = 0) -> dict:
    """Train one epoch from batch `start_iter`; `lr_at(fractional epoch, global iteration)` sets the lr of each
    iteration, `max_iters` > 0 ends the epoch early. `check_lag` 1: the host reads each iteration's stop / non-finite
    agreement one iteration late and a non-finite update is undone on the device (clsa/step_checks.py), so an
    ordinary iteration never waits for the device; 0: it waits before the update. Returns the epoch means (loss,
    infonce, ddm, acc1, acc5, img_per_s, seconds), `stopped_at` (the next batch index when a stop signal ended the
    epoch early, else None) and `skipped_files` (unreadable images this process replaced)."""
    timers = {k: AverageMeter(n, ":6.3f") for k, n in (("time", "Time"), ("data", "Data"))}
    means = DeviceMeans(list(STATS))
    labels = dict(STATS, ddm=(step.config.strong_label, STATS["ddm"][1]))
    flags = StepFlags(check_lag)
    model.train()
    n_iters = min(steps_per_epoch, max_iters) if max_iters else steps_per_epoch
    start = end = time.time()
    images, skipped_files, stopped_at = 0, [], None

    def agreed(a: Agreement) -> bool:
        """Act on one iteration's agreement; True when a stop was agreed."""
        if not a.finite:
            if not skip_nonfinite:
                raise NonFiniteLoss(f"non-finite loss at epoch {epoch} iteration {a.iteration}")
            logger.info(f"warning: non-finite loss at epoch {epoch} iteration {a.iteration}; step skipped "
                        "(--skip_nonfinite)")
        return a.stop

    for i, (views, _, skipped) in enumerate(loader, start=start_iter):
        if i >= n_iters:
            break
        timers["data"].update(time.time() - end)
        if make_views is None:  # --views cpu: the loader built them
            views, undecodable = [v.to(ctx.device, non_blocking=True) for v in views], []
        else:  # --views gpu: decode and build them here, on the device (data_processing/device_views.py)
            views, undecodable = make_views(views, epoch, i)
        for name in [f for entry in skipped if entry for f in entry.split("|")] + undecodable:
            skipped_files.append(name)
            logger.info(f"warning: skipped unreadable image {name}")
        n = views[0].shape[0]
        global_step = epoch * steps_per_epoch + i  # one counter for the lr schedule and TensorBoard
        set_learning_rate(optimizer, lr_at(epoch + i / steps_per_epoch, global_step))
        offset = ctx.rank * n  # the positive of local row j is row offset + j of the gathered keys
        out = step.loss(model, views, offset)
        if trace.enabled():  # tests: the rows of the gathered keys this process used as its positives
            trace.record(ctx.rank, "step", epoch=epoch, iteration=i, positives=list(range(offset, offset + n)),
                         loss=out.loss.item())
        finite = flags.push(i, stop is not None and stop.signum is not None, out.loss)
        keep = finite if check_lag else None
        if check_lag:  # kept or undone on the device; the host learns which one iteration later
            step.update(model, optimizer, out, only_if=finite)
        report = flags.pop()
        stop_now = report is not None and agreed(report)
        if not check_lag:
            if not report.finite:  # skipped (--skip_nonfinite), else agreed() raised
                end = time.time()
                continue
            step.update(model, optimizer, out)
        means.update([out.loss, *(out.stats[k] for k in list(STATS)[1:])], n, keep)
        images += n * ctx.world_size
        timers["time"].update(time.time() - end)
        end = time.time()
        if epoch == 0 and i == 0:
            logger.info("-" * 100)
            logger.info(f"contrastive loss count {int(out.stats['n_infonce'])}\tweak strong loss count "
                        f"{int(out.stats['n_ddm'])}")
        if i % print_freq == 0 or i == n_iters - 1 or stop_now:
            last, avg = means.read()
            rate = images / max(end - start, 1e-9)
            eta = (n_iters - i - 1) * timers["time"].avg
            shown = [timers["time"], timers["data"]] + [_meter(labels[k], last[k], avg[k]) for k in STATS]
            logger.info(progress_line(f"Epoch: [{epoch}]", i, n_iters, shown,
                                      f"img/s {rate:7.1f}\tETA {format_duration(eta)}"))
            logger.scalars({**{f"train/{k}": last[k] for k in STATS}, "train/img_per_s": rate,
                            "train/lr": optimizer.param_groups[0]["lr"]}, global_step)
        if stop_now and i + 1 < n_iters:
            stopped_at = i + 1
            break
    for report in flags.flush():  # the last iteration's agreement (check_lag 1); a stop then waits for the epoch end
        agreed(report)
    elapsed = time.time() - start
    summary: dict = means.read()[1]
    summary.update(img_per_s=images / max(elapsed, 1e-9), seconds=elapsed, stopped_at=stopped_at,
                   skipped_files=skipped_files)
    return summary


# The step statistics the loop prints: name -> (label, format). loss first; the others are CLSAStep's stats.
STATS = {"loss": ("Loss", ":.4e"), "infonce": ("InfoNCE", ":.4e"), "ddm": ("DDM", ":.4e"),
         "acc1": ("Acc@1", ":6.2f"), "acc5": ("Acc@5", ":6.2f")}


def _meter(label_fmt: tuple[str, str], last: float, avg: float) -> AverageMeter:
    meter = AverageMeter(*label_fmt)
    meter.val, meter.sum, meter.count = last, avg, 1
    return meter
