"""Numeric flags out of range or not finite: one line naming the flag and its range, exit 2, before any work, in
every entry point that has the flag (ops/ranges.py holds the one table)."""

from __future__ import annotations

import os

import pytest
from conftest import CPU_OVERRIDES, TINY_CROPS

import demo
import lincls
import main_clsa
from experiments import reproduce
from ops.errors import UsageError
from ops.ranges import RANGES, Range, check_ranges
from VOC_CLF import main as voc_main

MAIN_CASES = [
    ("--lr", "nan"), ("--lr", "-0.1"), ("--lr", "inf"), ("--momentum", "1"), ("--momentum", "-0.5"),
    ("--weight_decay", "-1e-4"), ("--weight_decay", "nan"), ("--moco_t", "0"), ("--moco_t", "nan"),
    ("--clsa_t", "-1"), ("--clsa_t", "inf"), ("--alpha", "-1"), ("--alpha", "nan"), ("--aug_times", "-1"),
    ("--aug_times", "15"), ("--seed", "-1"), ("--seed", str(2**32)), ("--max_iters", "-1"),
    ("--start_epoch", "-1"), ("--knn_t", "0"), ("--knn_t", "nan"), ("--knn_k", "-1"), ("--knn_k", "0"),
    ("--knn_freq", "0"), ("--knn_size", "0"), ("--dist_timeout", "0"), ("--dist_timeout", "nan"),
    ("--dist_timeout", "inf"), ("--moco_m", "nan"), ("--save_freq", "-1"),
]
LINCLS_CASES = [
    ("--lr", "nan"), ("--momentum", "1.5"), ("--wd", "-1"), ("--weight-decay", "nan"), ("--start-epoch", "-1"),
    ("--knn-t", "nan"), ("--final_lr", "-1"), ("--final_lr", "nan"), ("--seed", "-1"), ("--dist-timeout", "0"),
]


def _refused(capsys, run, prog: str, flag: str) -> str:
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: {flag} must be "), err
    return err[0]


@pytest.fixture
def no_launch(monkeypatch):
    """Any work after the checks fails the test at once (no training when a check is missing)."""
    def fail(*args, **kwargs):
        raise AssertionError("the run started: the bad value was not refused")
    for module in (main_clsa, lincls):
        monkeypatch.setattr(module, "launch", fail)
    monkeypatch.setattr(demo.fmnist_data, "locate", fail)
    monkeypatch.setattr(reproduce.fmnist_data, "locate", fail)
    monkeypatch.setattr(voc_main, "check_voc_layout", fail)


@pytest.mark.parametrize("flag,value", MAIN_CASES)
def test_main_clsa_refuses(flag, value, image_folder, tmp_path, capsys, no_launch):
    # flag=value: argparse reads a separate "-1e-4" as an option, not a number
    argv = ["--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--log_path", str(tmp_path / "log"), f"{flag}={value}"]
    line = _refused(capsys, lambda: main_clsa.main(argv), "main_clsa.py", flag)
    assert float(line.rsplit("got ", 1)[1]) == pytest.approx(float(value), nan_ok=True)
    assert not os.path.exists(tmp_path / "log")


@pytest.mark.parametrize("flag,value", LINCLS_CASES)
def test_lincls_refuses_with_its_spellings(flag, value, image_folder, capsys, no_launch):
    shown = {"--weight-decay": "--wd"}.get(flag, flag)  # the name --help lists first
    _refused(capsys, lambda: lincls.main(["--data", image_folder, "-e", "--pretrained", __file__, flag, value]),
             "lincls.py", shown)


@pytest.mark.parametrize("argv,flag", [
    (["--budget_min", "nan"], "--budget_min"), (["--budget_min", "inf"], "--budget_min"),
    (["--budget_min", "-1"], "--budget_min"), (["--seed", "-3"], "--seed"), (["--epochs", "0"], "--epochs"),
])
def test_demo_refuses(argv, flag, capsys, no_launch):
    _refused(capsys, lambda: demo.main(argv), "demo.py", flag)


@pytest.mark.parametrize("argv,flag", [
    (["--lr", "nan"], "--lr"), (["--lr_multi", "0"], "--lr_multi"), (["--budget_min", "nan"], "--budget_min"),
    (["--seeds", "0", "-1"], "--seeds"), (["--warmup_iters", "-1"], "--warmup_iters"),
])
def test_reproduce_refuses(argv, flag, capsys, no_launch):
    _refused(capsys, lambda: reproduce.main(argv), "experiments/reproduce.py", flag)


@pytest.mark.parametrize("argv,flag", [
    (["--lr", "nan"], "--lr"), (["--momentum", "1"], "--momentum"), (["--wd", "-1"], "--wd"),
    (["--seed", "-1"], "--seed"), (["--svm-costs", "1", "nan"], "--svm-costs"),
])
def test_voc_refuses(argv, flag, tmp_path, capsys, no_launch):
    _refused(capsys, lambda: voc_main.main(["--data", str(tmp_path), *argv]), "VOC_CLF/main.py", flag)


def test_messages_state_the_range():
    def message(rule: Range, integer: bool, value) -> str:
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--x", type=int if integer else float)
        with pytest.raises(UsageError) as e:
            check_ranges(p, argparse.Namespace(x=value), {"x": rule})
        return str(e.value)
    assert message(RANGES["lr"], False, float("nan")) == "--x must be a finite number > 0, got nan"
    assert message(RANGES["momentum"], False, 1.0) == "--x must be a finite number in [0, 1), got 1.0"
    assert message(RANGES["aug_times"], True, 15) == "--x must be in 0..14, got 15"
    assert message(RANGES["warmup_iters"], True, -5) == "--x must be >= 0, got -5"
    assert message(RANGES["dist_timeout"], False, 0.0) == "--x must be a finite number in (0, 525600], got 0.0"


def test_valid_values_pass():
    from ops.argparser import build_parser
    p = build_parser()
    args = p.parse_args(["--seed", "0", "--momentum", "0", "--weight_decay", "0", "--alpha", "0",
                         "--aug_times", "0", "--knn_size", "16", "--dist_timeout", "0.2"])
    check_ranges(p, args)
