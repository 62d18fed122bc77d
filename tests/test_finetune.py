"""finetune.py on CPU: every layer and the BN statistics train (the linear probe's do not), finetune.json and the
subset it records, SIGTERM + --resume ending with the weights of an uninterrupted run, and one-line refusals."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO, free_port, run_script, write_image_folder
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from clsa.evaluation import eval_transform
from clsa.linear import (
    backbone_snapshot,
    changed_backbone_tensors,
    finetune_model,
    linear_model,
    train_classifier_epoch,
    validate,
)
from data_processing.subsets import label_subset

TINY = ["-a", "resnet18", "-b", "4", "-j", "0", "--train-crop", "32", "--val-resize", "32", "--val-crop", "32",
        "-p", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """2 classes x 12 train images, 2 x 2 val images (32 px)."""
    root = str(tmp_path_factory.mktemp("ft") / "data")
    write_image_folder(root, classes=2, per_class=12, size=(32, 32))
    write_image_folder(root, classes=2, per_class=2, size=(32, 32), split="val", seed=1)
    return root


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory) -> str:
    """A pretraining checkpoint in the MoCo / CLSA layout (encoder_q with an MLP head, encoder_k, queue)."""
    torch.manual_seed(0)
    src = torchvision.models.resnet18(weights=None).state_dict()
    state = {"module.encoder_q." + k: v for k, v in src.items() if not k.startswith("fc.")}
    state.update({"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.encoder_k.conv1.weight":
                  torch.ones(64, 3, 7, 7), "module.queue": torch.zeros(128, 8)})
    path = str(tmp_path_factory.mktemp("pre") / "pretrained.pth.tar")
    torch.save({"state_dict": state, "epoch": 3, "arch": "resnet18"}, path)
    return path


def run_dir(log: str) -> str:
    found = glob.glob(os.path.join(log, "Semisup_log", "*"))
    assert len(found) == 1, found
    return found[0]


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_epoch_moves_backbone_and_bn_only_when_fine_tuning():
    """The shared training epoch: the linear probe keeps every backbone tensor; fine-tuning moves weights and BN."""
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))] * 2
    for model, trains in ((linear_model("resnet18", 2), False), (finetune_model("resnet18", 2), True)):
        params = [p for p in model.parameters() if p.requires_grad]
        before = backbone_snapshot(model)
        train_classifier_epoch(model, batches, torch.optim.SGD(params, 0.1, momentum=0.9), 0, torch.device("cpu"),
                               10, lambda s: None, train_backbone=trains)
        changed = changed_backbone_tensors(model, before)
        if trains:
            assert "conv1.weight" in changed and "layer4.1.bn2.weight" in changed
            assert "bn1.running_mean" in changed and "layer4.1.bn2.running_var" in changed
            assert model.training
        else:
            assert changed == [] and not model.training


def test_finetune_from_pretrained_with_a_fraction(data, moco_checkpoint, tmp_path):
    log = str(tmp_path / "log")
    r = run_script(["finetune.py", "--data", data, "--pretrained", moco_checkpoint, "--label-fraction", "0.5",
                    "--subset-seed", "7", "--epochs", "1", "--log_path", log, "--seed", "0", *TINY])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "query encoder of a pretraining checkpoint, epoch 3" in r.stdout
    assert "12 of 24 train images labelled (class-balanced fraction 0.5, seed 7; 6-6 per class)" in r.stdout
    folder = run_dir(log)
    result = json.load(open(os.path.join(folder, "finetune.json")))
    assert result["mode"] == "finetune" and result["epoch"] == 1 and result["images"] == 4
    assert result["init"] == "pretrained" and result["lr"] == pytest.approx(0.05 * 4 / 256)
    sub = result["subset"]
    assert (sub["kind"], sub["fraction"], sub["seed"], sub["images"], sub["split_images"]) == (
        "fraction", 0.5, 7, 12, 24)
    assert result["args"]["label_fraction"] == 0.5 and 0 <= result["top1"] <= 100
    names = open(os.path.join(folder, sub["names_file"])).read().split()
    assert len(names) == 12 and all(n.startswith(("class0/", "class1/")) for n in names)

    # every backbone tensor of the pretrained encoder moved, BN running statistics included
    state = {k[len("module."):]: v for k, v in load(os.path.join(folder, "checkpoint_last.pth.tar"))[
        "state_dict"].items()}
    pre = load(moco_checkpoint)["state_dict"]
    for key in ("conv1.weight", "layer3.0.conv2.weight", "bn1.running_mean", "layer4.1.bn2.running_var"):
        assert not torch.equal(state[key], pre["module.encoder_q." + key]), key
    assert state["bn1.num_batches_tracked"] == 3  # 12 images / batch 4

    # the recorded list selects the same images again
    train = ImageFolder(os.path.join(data, "train"))
    again = label_subset(train, train.classes, os.path.join(folder, sub["names_file"]))
    assert again.kind == "list" and again.names_sha256 == sub["names_sha256"]


def test_eval_freq_validates_every_nth_epoch_and_the_last(data, tmp_path):
    """--eval-freq 2 over 3 epochs: epoch 0 is not validated, epochs 1 and 2 (the last) are; the result file is the
    last epoch's, so a protocol that reports the final model never reads an earlier, test-selected one."""
    log = str(tmp_path / "log")
    r = run_script(["finetune.py", "--data", data, "--random-init", "--epochs", "3", "--eval-freq", "2",
                    "--log_path", log, "--seed", "0", *TINY])
    assert r.returncode == 0, r.stdout + r.stderr
    note = "(validation every 2 epochs and after the last)"
    done = re.findall(r"epoch (\d) done in \S+: lr \S+ train loss \S+ (Acc@1|" + re.escape(note) + ")", r.stdout)
    assert done == [("0", note), ("1", "Acc@1"), ("2", "Acc@1")], r.stdout
    assert r.stdout.count(" * Acc@1 ") == 2, r.stdout  # two validations, not three
    result = json.load(open(os.path.join(run_dir(log), "finetune.json")))
    assert result["epoch"] == 3 and result["args"]["eval_freq"] == 2


def test_resume_after_sigterm_ends_like_an_uninterrupted_run(data, tmp_path):
    """Constant lr (--cos 0, no milestones), so a run started with --epochs 100 and resumed with --epochs 1 follows
    the uninterrupted --epochs 1 run batch for batch."""
    common = ["finetune.py", "--data", data, "--random-init", "--seed", "1", "--cos", "0", "--schedule", *TINY]
    full = run_script([*common, "--epochs", "1", "--log_path", str(tmp_path / "full")])
    assert full.returncode == 0, full.stdout + full.stderr

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *common, "--epochs", "100", "--log_path", str(tmp_path / "cut")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    for line in proc.stdout:
        seen += line
        if re.search(r"Epoch: \[0\]\[\s*1/", line):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, seen + rest
    path = re.search(r"SIGTERM: saved (\S+);", rest).group(1)
    ckpt = load(path)
    assert ckpt["epoch"] == 0 and 0 < ckpt["iteration"] < 6, (ckpt["epoch"], ckpt["iteration"])

    resumed = run_script([*common, "--epochs", "1", "--resume", path])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"(epoch 0, batch {ckpt['iteration']})" in resumed.stdout
    assert f"Epoch: [0][{ckpt['iteration']}/6]" in resumed.stdout
    folders = (run_dir(str(tmp_path / "full")), os.path.dirname(path))
    a, b = (load(os.path.join(f, "checkpoint_last.pth.tar"))["state_dict"] for f in folders)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    results = [json.load(open(os.path.join(f, "finetune.json"))) for f in folders]
    assert results[0]["top1"] == results[1]["top1"] and results[1]["init"] == "random"


def test_two_processes_validate_the_model_rank_0_saves(data, tmp_path):
    """mp.spawn, 2 CPU processes, BN in train mode: each rank updates its own BN statistics, so rank 0's are given to
    every rank before validating. The 2-process validation then equals a 1-process validation of the saved
    checkpoint, loss included, and counts each validation image once."""
    log = str(tmp_path / "log")
    r = run_script(["finetune.py", "--data", data, "--random-init", "--cpu-procs", "2", "--dist-url",
                    f"tcp://127.0.0.1:{free_port()}", "--epochs", "1", "--seed", "0", "--log_path", log, *TINY])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es) on cpu" in r.stdout and "batch 2 per process (global 4)" in r.stdout
    folder = run_dir(log)
    two = json.load(open(os.path.join(folder, "finetune.json")))
    assert two["images"] == 4 and two["global_batch"] == 4
    model = finetune_model("resnet18", 2)
    state = load(os.path.join(folder, "checkpoint_last.pth.tar"))["state_dict"]
    model.load_state_dict({k[len("module."):]: v for k, v in state.items()})
    val = ImageFolder(os.path.join(data, "val"), transform=eval_transform(32, 32))
    one = validate(model, DataLoader(val, batch_size=4), torch.device("cpu"), 10, lambda s: None)
    assert (one["top1"], one["images"]) == (two["top1"], 4) and one["loss"] == pytest.approx(two["loss"], rel=1e-5)


def test_help_shows_every_flag_and_the_protocol(capsys):
    import finetune
    with pytest.raises(SystemExit) as exc:
        finetune.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert exc.value.code == 0
    for flag in ("--train-subset", "--label-fraction", "--subset-seed", "--random-init", "--nesterov",
                 "--lr-scaling", "--cpu-procs", "--resume", "--trust-checkpoint"):
        assert flag in out, flag
    assert "0.05 x 4096 / 256 = 0.8" in out and "60 when the labelled images are at most 5 %" in out


def write_list(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("case, needle", [
    ("fraction 0", "--label-fraction must be in (0, 1], got 0.0"),
    ("fraction 1.5", "--label-fraction must be in (0, 1], got 1.5"),
    ("both", "--train-subset and --label-fraction are two ways"),
    ("unknown files", "data/train' (first: class0/99.jpg, a.jpg, b.jpg)"),
    ("empty class", "train/class2 holds no images"),
    ("nesterov", "--nesterov 1 needs --momentum > 0"),
    ("no encoder", "pass --pretrained CHECKPOINT to fine-tune an encoder, or --random-init"),
])
def test_bad_inputs_are_one_line_exit_2(data, tmp_path, capsys, case, needle):
    import finetune
    argv = ["--data", data, "--random-init", "--log_path", str(tmp_path / "log"), *TINY]
    if case.startswith("fraction"):
        argv += ["--label-fraction", case.split()[1]]
    elif case == "both":
        argv += ["--label-fraction", "0.1", "--train-subset", write_list(tmp_path, ["class0/0.jpg"])]
    elif case == "unknown files":
        argv += ["--train-subset", write_list(tmp_path, ["class0/99.jpg", "a.jpg", "class1/1.jpg", "b.jpg"])]
    elif case == "empty class":
        root = write_image_folder(str(tmp_path / "d3"), classes=2, per_class=2, size=(32, 32))
        write_image_folder(root, classes=3, per_class=1, size=(32, 32), split="val")
        os.makedirs(os.path.join(root, "train", "class2"))
        argv[1] = root
    elif case == "nesterov":
        argv += ["--momentum", "0"]
    else:
        argv.remove("--random-init")
    with pytest.raises(SystemExit) as exc:
        finetune.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("finetune.py: error: ") and needle in err, err
    if case == "unknown files":
        assert "--train-subset" in err and ": 3 of its 4 images are not in '" in err
    assert not os.path.exists(tmp_path / "log" / "Semisup_log")  # a refused run leaves no directory
