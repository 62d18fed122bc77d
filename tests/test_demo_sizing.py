"""The demo's sizing rule: whole epochs that fit the budget at the measured speed (experiments/demo_sizing.py)."""

import pytest

from experiments.demo_sizing import (
    EVAL_FLOOR,
    EVAL_SHARE,
    MONITOR_FLOOR,
    STEP,
    EvalSizes,
    epoch_seconds,
    fit,
    fit_eval,
    steady_rate,
)
from ops.runlog import AverageMeter, progress_line

KNN = 7000  # the demo's monitor: 5000 bank + 2000 queries
QUIET_LEFT = 900 - 200  # 15 min less data preparation, speed measurement, start-up and the evaluation reserve
ALL = 60000  # the demo pretrains on every train image unless --subset says otherwise


def test_quiet_machine_keeps_the_recipe():
    plan = fit(400.0, QUIET_LEFT, 4, ALL, KNN, 128)
    assert (plan.epochs, plan.images, plan.shortened) == (4, ALL, False)


def most_images_that_fit(epochs: int, rate: float, left: float) -> int:
    """Brute force: the largest multiple of STEP (at most ALL) whose `epochs` epochs fit in `left` seconds."""
    fitting = [n for n in range(0, ALL + 1, STEP) if epochs * epoch_seconds(n, KNN, rate) <= left]
    return max(fitting) if fitting else 0


@pytest.mark.parametrize("rate,left", [(400.0, 190.0), (130.0, 790.0), (60.0, 790.0), (150.0, 300.0),
                                       (75.0, 500.0), (69.0, 1300.0)])
def test_slow_or_short_runs_train_the_most_images_that_fit(rate, left):
    plan = fit(rate, left, 4, ALL, KNN, 128)
    assert plan.shortened and 1 <= plan.epochs <= 4 and plan.images % STEP == 0
    assert plan.epochs * epoch_seconds(plan.images, KNN, rate) <= left
    seen = {e: e * most_images_that_fit(e, rate, left) for e in range(1, 5)}
    assert plan.epochs * plan.images == max(seen.values())
    assert plan.epochs == min(e for e, total in seen.items() if total == max(seen.values()))  # fewer epochs first


def test_more_time_never_trains_less():
    work = [fit(200.0, left, 4, ALL, KNN, 128) for left in range(60, 1500, 40)]
    seen = [p.epochs * p.images for p in work]
    assert seen == sorted(seen) and seen[-1] == 4 * ALL


def test_one_epoch_of_every_image_when_it_is_the_most_that_fits():
    plan = fit(400.0, 158.0, 4, ALL, KNN, 128)  # 2 epochs of 30,000 would see no more images than 1 of 60,000
    assert (plan.epochs, plan.images) == (1, ALL)
    plan = fit(69.0, 1300.0, 4, ALL, KNN, 128)  # 1 epoch of all would leave 7 of the 21 minutes unused
    assert plan.epochs == 2 and plan.images < ALL


def test_hopeless_budget_still_plans_one_epoch_of_some_batches():
    plan = fit(50.0, 5.0, 4, ALL, KNN, 128)
    assert plan.shortened and plan.epochs == 1 and plan.images == 4 * 128


def test_steady_rate_skips_the_first_iterations():
    batch, lines, t = 128, [], 0.0
    meters = [AverageMeter("Loss", ":.4e")]
    for i in range(41):
        t += 5.0 if i == 0 else 0.32  # a slow first iteration (start-up), then 400 img/s
        if i % 10 == 0:
            rate = (i + 1) * batch / t
            lines.append(progress_line("Epoch: [0]", i, 234, meters, f"img/s {rate:7.1f}\tETA 0:01:00"))
    assert steady_rate(lines, batch) == pytest.approx(400.0, rel=0.01)
    assert steady_rate(lines[:2], batch) == pytest.approx(400.0, rel=0.01)  # a measurement stopped early
    assert steady_rate(lines[:1], batch) == pytest.approx(batch / 5.0)  # one line: start-up included
    assert steady_rate(["unrelated"], batch) is None


def test_plan_line_says_what_runs():
    plan = fit(400.0, 120.0, 4, ALL, KNN, 128)
    assert plan.epochs == 1  # 120 s: one epoch of 47,000 images
    want = f"this machine: 400 img/s; training 1 epoch on {plan.images} images to fit 5 min"
    assert plan.line(5) == want


ASKED = EvalSizes(bank=10000, queries=10000, monitor_bank=5000, monitor_queries=2000)


def test_quiet_machine_keeps_the_evaluation_even_at_a_third_of_the_budget():
    assert fit_eval(400.0, 300.0, ASKED) == ASKED
    assert fit_eval(400.0, 900.0, ASKED) == ASKED


@pytest.mark.parametrize("rate,budget", [(100.0, 300.0), (30.0, 900.0), (60.0, 300.0)])
def test_slow_machines_evaluate_fewer_images_within_the_share(rate, budget):
    got = fit_eval(rate, budget, ASKED)
    assert got != ASKED and got.seconds(rate) <= EVAL_SHARE * budget
    sizes = (got.bank, got.queries, got.monitor_bank, got.monitor_queries)
    assert all(n % STEP == 0 for n in sizes) and got.monitor_bank <= got.bank and got.monitor_queries <= got.queries
    assert got.bank == got.queries  # one factor for all: equal asks stay equal


def test_hopeless_speed_keeps_the_floors():
    got = fit_eval(5.0, 60.0, ASKED)
    assert (got.bank, got.queries, got.monitor_bank, got.monitor_queries) == (
        EVAL_FLOOR, EVAL_FLOOR, MONITOR_FLOOR, MONITOR_FLOOR)
    tiny = EvalSizes(64, 40, 64, 40)  # the smoke sizes are below every floor and stay as asked
    assert fit_eval(5.0, 60.0, tiny) == EvalSizes(64, 40, 64, 40)


WITH_FT = EvalSizes(bank=10000, queries=10000, monitor_bank=5000, monitor_queries=2000, finetune_passes=600 * 10)


def test_the_fine_tune_is_costed_and_kept_while_the_images_shrink():
    assert WITH_FT.seconds(100.0) > ASKED.seconds(100.0) + 2 * 600 * 10 / (3 * 100.0)  # two runs, more than kNN cost
    assert fit_eval(400.0, 900.0, WITH_FT) == WITH_FT
    got = fit_eval(75.0, 900.0, WITH_FT)
    assert got.finetune_passes == WITH_FT.finetune_passes and got.seconds(75.0) <= EVAL_SHARE * 900.0
    assert got.bank < WITH_FT.bank and got.bank == got.queries


def test_the_fine_tune_is_dropped_when_even_the_floors_do_not_fit():
    got = fit_eval(20.0, 900.0, WITH_FT)
    assert got.finetune_passes == 0 and got == fit_eval(20.0, 900.0, ASKED)
