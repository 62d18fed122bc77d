"""How much pretraining the demo can afford on this machine: whole epochs that end inside the budget.

The demo measures its training speed r (images/s) in the first iterations, then picks epochs E and images N with
E * (N / r + c_kNN) <= the seconds left, where c_kNN is the per-epoch kNN monitor (forward passes only, costed at
KNN_SPEEDUP images per training image). Preference: the full recipe; else the most training images E * N that fit
(E at most the asked epochs, N at most the asked images), and of equal totals the one with fewer epochs over more
different images (the per-iteration cosine schedule runs its whole course either way).

The final evaluation (kNN + linear probe of two encoders: 2 x (bank + queries) forward passes; the 1 %-label
fine-tune of both: 2 x (labelled images x epochs training passes + queries)) is sized first, by `fit_eval`: when it
would take more than EVAL_SHARE of the budget, the bank, the queries and the per-epoch monitor shrink by one factor
(never below EVAL_FLOOR / MONITOR_FLOOR images); when even that does not fit, the fine-tune is skipped (and the
demo says so), so a slow machine still has time to train.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

KNN_SPEEDUP = 5.0  # a kNN image (one 32-px forward) vs a training image (3 views, backward); measured 6.4x
FT_SPEEDUP = 1.5  # a fine-tune image (one 32-px view, forward and backward) vs a pretraining image
FT_FIXED_S = 20.0  # per fine-tune run: process start, data, model build
SPEED_MARGIN = 0.85  # plan at this share of the measured speed: a 2-core VM's speed drifts by 10-25 % within minutes
STEP = 500  # subsets are multiples of this (class-balanced carving, whole batches)
EVAL_SHARE = 0.3  # the final evaluation's share of the budget at most ...
EVAL_FIXED_S = 15.0  # ... counting its fixed cost (model builds, linear-probe fits)
EVAL_FLOOR = 2000  # bank and queries never shrink below this
MONITOR_FLOOR = 1000  # nor the monitor's bank and queries below this

PROGRESS = re.compile(r"Epoch: \[\d+\]\[\s*(\d+)/\d+\].*img/s\s+([\d.]+)")


@dataclass
class Plan:
    """What the demo trains: `epochs` over `images`, and why (`shortened` is False for the full recipe)."""
    epochs: int
    images: int
    img_per_s: float
    shortened: bool

    def line(self, budget_min: float) -> str:
        return (f"this machine: {self.img_per_s:.0f} img/s; training {self.epochs} epoch{'s' * (self.epochs != 1)} "
                f"on {self.images} images to fit {budget_min:g} min")


def steady_rate(lines: list[str], batch: int) -> float | None:
    """Images/s between the first and the last progress line (the first iterations' start-up excluded); with one
    line, its cumulative rate (start-up included: an underestimate); None without any.

    main_clsa.py prints the cumulative rate since the epoch began at iteration i: (i+1)*batch images in t_i s.
    """
    rates = [(int(i), float(r)) for i, r in (m.groups() for m in map(PROGRESS.search, lines) if m)]
    rates = [(i, r) for i, r in rates if r > 0]
    if len(rates) == 1:
        return rates[0][1]
    if not rates:
        return None
    (i0, r0), (i1, r1) = rates[0], rates[-1]
    t0, t1 = (i0 + 1) * batch / r0, (i1 + 1) * batch / r1
    return (i1 - i0) * batch / (t1 - t0) if t1 > t0 else None


@dataclass
class EvalSizes:
    """Images of the final evaluation (`bank` train, `queries` test), of the per-epoch kNN monitor and of one
    fine-tune run (`finetune_passes`: labelled images x epochs; 0: no fine-tune)."""
    bank: int
    queries: int
    monitor_bank: int
    monitor_queries: int
    finetune_passes: int = 0

    def seconds(self, rate: float) -> float:
        """Final evaluation of two encoders (pretrained, random init) plus the random init's monitor point."""
        passes = 2 * (self.bank + self.queries) + self.monitor_images
        return EVAL_FIXED_S + passes / (KNN_SPEEDUP * rate) + 2 * self.finetune_seconds(rate)

    def finetune_seconds(self, rate: float) -> float:
        """One fine-tune run: its training passes, then the test images."""
        if not self.finetune_passes:
            return 0.0
        return self._finetune_training(rate) + self.queries / (KNN_SPEEDUP * rate)

    def fixed_seconds(self, rate: float) -> float:
        """The part of `seconds` that does not shrink with the image counts."""
        return EVAL_FIXED_S + (2 * self._finetune_training(rate) if self.finetune_passes else 0.0)

    def _finetune_training(self, rate: float) -> float:
        return FT_FIXED_S + self.finetune_passes / (FT_SPEEDUP * rate)

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """The four image counts (bank, queries, monitor bank, monitor queries), without the fine-tune."""
        return self.bank, self.queries, self.monitor_bank, self.monitor_queries

    @property
    def monitor_images(self) -> int:
        return self.monitor_bank + self.monitor_queries


def fit_eval(rate: float, seconds: float, asked: EvalSizes) -> EvalSizes:
    """`asked`, or all four image counts scaled by one factor (multiples of STEP, floors kept) so that the evaluation
    takes at most EVAL_SHARE of `seconds` at `rate` training images/s; without the fine-tune (finetune_passes 0)
    when it does not fit even at the floors."""
    if asked.seconds(rate) <= EVAL_SHARE * seconds:
        return asked
    fixed = asked.fixed_seconds(rate)
    scale = max(EVAL_SHARE * seconds - fixed, 0.0) / (asked.seconds(rate) - fixed)

    def shrink(n: int, floor: int) -> int:
        return max(min(n, floor), int(n * scale) // STEP * STEP)

    bank, queries = shrink(asked.bank, EVAL_FLOOR), shrink(asked.queries, EVAL_FLOOR)
    got = EvalSizes(bank, queries, min(shrink(asked.monitor_bank, MONITOR_FLOOR), bank),
                    min(shrink(asked.monitor_queries, MONITOR_FLOOR), queries), asked.finetune_passes)
    if got.finetune_passes and got.seconds(rate) > EVAL_SHARE * seconds:
        return fit_eval(rate, seconds, dataclasses.replace(asked, finetune_passes=0))
    return got


def epoch_seconds(images: int, knn_images: int, rate: float) -> float:
    return images / rate + knn_images / (KNN_SPEEDUP * rate)


def fit(rate: float, seconds: float, epochs: int, images: int, knn_images: int, batch: int) -> Plan:
    """The largest run of whole epochs that fits `seconds` at `rate` images/s, in the order of the module doc."""
    if epochs * epoch_seconds(images, knn_images, rate) <= seconds:
        return Plan(epochs, images, rate, False)
    best = Plan(1, 0, rate, True)
    for e in range(1, epochs + 1):
        per_epoch = seconds / e - epoch_seconds(0, knn_images, rate)
        n = min(images, int(max(per_epoch * rate, 0.0)) // STEP * STEP)
        if e * n > best.epochs * best.images:  # ties keep fewer epochs over more images
            best = Plan(e, n, rate, True)
    if best.images < min(images, 4 * batch):  # hopeless: still a few batches, so there is an encoder to report
        return Plan(1, min(images, 4 * batch), rate, True)
    return best
