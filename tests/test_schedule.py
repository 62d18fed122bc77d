"""The learning-rate schedule: the 2021 per-epoch cosines, the per-iteration cosine (--cos 3) and linear warmup."""

from __future__ import annotations

import math
import os

import pytest
from conftest import CPU_OVERRIDES

import main_clsa
from clsa.engine import learning_rate


@pytest.mark.parametrize("cos", [1, 2])
def test_2021_schedules_change_once_per_epoch(cos):
    for epoch in range(4):
        start = learning_rate(0.03, epoch, 4, cos)
        assert learning_rate(0.03, epoch + 0.99, 4, cos, step=epoch * 10 + 9) == start
    assert learning_rate(0.03, 0, 4, 1) == pytest.approx(0.03)
    assert learning_rate(0.03, 2, 4, 1) == pytest.approx(0.015)
    assert learning_rate(0.03, 2, 4, 2) == pytest.approx(0.03 * math.cos(math.pi / 4))
    assert learning_rate(0.03, 2.5, 4, 0) == 0.03  # any other value: constant


def test_per_iteration_cosine_is_continuous_and_decreasing():
    values = [learning_rate(0.1, i / 10, 5, 3) for i in range(50)]
    assert values[0] == pytest.approx(0.1)
    assert values[25] == pytest.approx(0.05)  # half way: e = E / 2
    drops = [a - b for a, b in zip(values[:-1], values[1:], strict=True)]
    assert min(drops) > 0
    assert max(drops) < 0.1 * math.pi / 100 + 1e-12  # no per-epoch jumps


def test_warmup_is_linear_then_off():
    assert learning_rate(0.1, 0, 5, 3, step=0, warmup_iters=100) == pytest.approx(0.001)
    assert learning_rate(0.1, 0, 5, 1, step=49, warmup_iters=100) == pytest.approx(0.05)
    assert learning_rate(0.1, 0.5, 10, 1, step=100, warmup_iters=100) == pytest.approx(0.1)
    assert learning_rate(0.1, 0, 5, 3, step=0, warmup_iters=0) == pytest.approx(0.1)


def test_training_sets_the_rate_every_iteration(image_folder, tmp_path):
    """16 images, batch 8: two iterations of epoch 0 with a 10-iteration warmup; the epoch ends at 0.5 * 2/10
    times the cosine at e = 1/2 of E = 1."""
    run_dir = str(tmp_path / "run")
    main_clsa.main(["--data", image_folder, *CPU_OVERRIDES, "--run_dir", run_dir, "--lr", "0.5", "--cos", "3",
                    "--warmup_iters", "10", "--nmb_crops", "1", "1", "--size_crops", "32", "16",
                    "--min_scale_crops", "0.2", "0.1", "--max_scale_crops", "1", "0.5", "--pick_weak", "0",
                    "--pick_strong", "1", "--seed", "0"])
    with open(os.path.join(run_dir, "train.log")) as f:
        summary = [line for line in f if line.startswith("epoch 0 done")]
    expected = 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)) * 2 / 10
    assert len(summary) == 1 and f"lr {expected:.4g} " in summary[0], summary
