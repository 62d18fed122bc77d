"""Hostile or unlucky input ends in one line, never a traceback: a readable checkpoint that does not fit on --resume,
an --arch that does not fit the exported file, a run folder that is a file, a full disk while saving (the previous
checkpoint stays), a stop signal before the training loop's handler exists, and result files written halfway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision
from conftest import CPU_OVERRIDES, REPO, TINY_CROPS, pretraining_shaped_checkpoint, run_script, write_image_folder

from clsa.checkpoint import restore_run_state
from ops.atomic import write_json
from ops.errors import FileProblem
from ops.runlog import RunLogger

PRETRAIN = [*CPU_OVERRIDES, *TINY_CROPS, "--workers", "0", "--seed", "0"]
LINCLS = ["-a", "resnet18", "-b", "8", "-j", "0", "--train-crop", "32", "--val-resize", "36", "--val-crop", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("data"))
    write_image_folder(root, 2, 8, (36, 36), "train")
    return write_image_folder(root, 2, 2, (36, 36), "val", seed=1)


def one_line(proc: subprocess.CompletedProcess, prog: str, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith(f"{prog}: error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def lincls_shaped(path: str) -> str:
    """What lincls.py saves: a torchvision resnet18 with a 2-class fc under `module.`, best_acc1, args."""
    model = torchvision.models.resnet18(num_classes=2)
    torch.save({"epoch": 1, "arch": "resnet18", "best_acc": 50.0, "best_acc1": 50.0, "args": {"arch": "resnet18"},
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def test_resume_of_a_checkpoint_that_does_not_fit(data, tmp_path):
    lin = lincls_shaped(str(tmp_path / "lin.pth.tar"))
    encoder_only = pretraining_shaped_checkpoint(str(tmp_path / "encoder_only.pth.tar"))
    no_epoch = str(tmp_path / "no_epoch.pth.tar")
    torch.save({k: v for k, v in torch.load(encoder_only, weights_only=True).items() if k != "epoch"}, no_epoch)
    cases = {lin: "is not a pretraining checkpoint", no_epoch: "has 'epoch' = None, not a count",
             encoder_only: "does not fit this run's model (RuntimeError: Error(s) in loading state_dict"}
    for path, words in cases.items():
        proc = run_script(["main_clsa.py", "--data", data, *PRETRAIN, "--resume", path,
                           "--run_dir", str(tmp_path / "run")])
        one_line(proc, "main_clsa.py", f"--resume {path!r}", words)


def test_restore_refuses_optimizer_and_rng_states_that_do_not_fit(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = str(tmp_path / "ckpt.pth.tar")
    bad = {"optimizer": {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]},
           "rng": [{"python": "not a state", "numpy": (), "torch": torch.zeros(1)}]}
    for key, value in bad.items():
        torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, key: value}, path)
        with pytest.raises(FileProblem, match=r"^'.*ckpt\.pth\.tar' does not fit the model \((ValueError|TypeError)"):
            restore_run_state(path, model, torch.optim.SGD(model.parameters(), 0.1), fits="the model")


def test_export_with_an_arch_that_does_not_fit(tmp_path):
    ckpt = pretraining_shaped_checkpoint(str(tmp_path / "r18.pth.tar"))
    proc = run_script(["export_backbone.py", ckpt, str(tmp_path / "out.pth"), "--arch", "resnet50"])
    one_line(proc, "export_backbone.py", "does not match torchvision's resnet50", "records arch 'resnet18'",
             "pass the right --arch")
    assert not os.path.exists(tmp_path / "out.pth")


def test_a_run_folder_that_is_a_file(data, tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("not a folder")
    runs = {"--log_path": (["main_clsa.py", "--data", data, *PRETRAIN, "--log_path", str(plain)], "is a file"),
            "--run_dir": (["main_clsa.py", "--data", data, *PRETRAIN, "--run_dir", str(plain / "run")],
                          f"lies under {str(plain)!r}, which is a file"),
            "--save_path": (["lincls.py", "--data", data, *LINCLS, "--save_path", str(plain)], "is a file")}
    runs["lincls --log_path"] = (["lincls.py", "--data", data, *LINCLS, "--save_path", str(tmp_path),
                                  "--log_path", "plain"], "is a file")
    for flag, (argv, words) in runs.items():
        one_line(run_script(argv), argv[0], flag.split()[-1], words)
    assert plain.read_text() == "not a folder"


DISK_FULL = """
import errno, runpy, sys, torch
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):  # the second checkpoint meets a full disk halfway
    calls.append(1)
    if len(calls) < 2:
        return real(obj, f, *args, **kwargs)
    f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")
torch.save = save
sys.argv[0] = "main_clsa.py"
runpy.run_path("main_clsa.py", run_name="__main__")
"""


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(data, tmp_path):
    run_dir = str(tmp_path / "run")
    argv = ["-c", DISK_FULL, "--data", data, *PRETRAIN, "--max_iters", "1", "--run_dir", run_dir]
    argv[argv.index("--epochs") + 1] = "2"
    proc = run_script(argv)
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    one_line(proc, "main_clsa.py", f"could not write {last} (No space left on device)",
             f"the previous checkpoint {last} is intact")
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp")]


@pytest.mark.parametrize("entry, signum, code", [("main_clsa.py", signal.SIGTERM, 75),
                                                  ("main_clsa.py", signal.SIGINT, 130),
                                                  ("lincls.py", signal.SIGTERM, 75),
                                                  ("finetune.py", signal.SIGUSR1, 75)])
def test_a_stop_signal_before_the_training_loop(data, tmp_path, entry, signum, code):
    """Sent as soon as the process catches SIGTERM (read from /proc), at the latest after 1 s: either way before
    torch is imported and long before the training loop's handler exists."""
    log = tmp_path / "log"
    flags = {"main_clsa.py": [*PRETRAIN, "--log_path", str(log)],
             "lincls.py": [*LINCLS, "--save_path", str(log)],
             "finetune.py": [*LINCLS, "--random-init", "--label-fraction", "0.5", "--save_path", str(log)]}[entry]
    proc = subprocess.Popen([sys.executable, entry, "--data", data, *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 1.0
    while time.time() < deadline:
        with open(f"/proc/{proc.pid}/status") as f:
            caught = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
        if caught >> (signal.SIGTERM - 1) & 1:
            break
        time.sleep(0.005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    assert err.strip().splitlines() == [f"{entry}: {signal.Signals(signum).name} before training started: "
                                        f"nothing to save; rerun the same command (exit code {code})"], err
    assert not log.exists()


@pytest.mark.parametrize("writer", ["write_json", "run_logger"])
def test_json_results_are_replaced_atomically(tmp_path, writer):
    """The demo's and the reproduction's results.json (ops.atomic.write_json) and a run's args/linear/finetune.json
    (RunLogger.write_json): a write that fails halfway leaves the previous file whole and no temporary file."""
    if writer == "run_logger":
        logger = RunLogger(str(tmp_path), enabled=True, tensorboard=False)
        write = logger.write_json
        path = str(tmp_path / "results.json")
    else:
        path = str(tmp_path / "results.json")
        write = lambda name, obj: write_json(str(tmp_path / name), obj)  # noqa: E731
    before = set(os.listdir(tmp_path))
    write("results.json", {"encoders": {"clsa": {"knn_top1": 80.0}}})
    with pytest.raises(TypeError):  # fails halfway through serialising, as a stopped run would
        write("results.json", {"encoders": {"clsa": {"knn_top1": 81.0}}, "figures": [object()]})
    with open(path) as f:
        assert json.load(f) == {"encoders": {"clsa": {"knn_top1": 80.0}}}
    assert set(os.listdir(tmp_path)) - before == {"results.json"}
