"""lincls.py end to end on CPU: a main_clsa.py checkpoint, one process and 2-process torchrun, -e, refusals."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import pytest
import torch
from conftest import free_port, run_script
from evaluation_support import CLASSES, SMALL, VAL_PER_CLASS, eval_folder, pretrained_checkpoint, shared_base

import lincls
from clsa.linear import linear_lr, linear_model, validate
from clsa.pretrained import load_encoder_weights
from ops.errors import UsageError

ACC_LINE = re.compile(r"^ \* Acc@1 (\d+\.\d+) Acc@5 (\d+\.\d+)$", re.M)
VAL_IMAGES = CLASSES * VAL_PER_CLASS


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> tuple[str, str]:
    base = shared_base(tmp_path_factory)
    return eval_folder(base), pretrained_checkpoint(base)


def run_dir(log_path: str) -> str:
    found = glob.glob(os.path.join(log_path, "Finetune_log", "*"))
    assert len(found) == 1, found
    return found[0]


def acc_lines(out: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in ACC_LINE.findall(out)]


@pytest.fixture(scope="session")
def one_process_run(shared, tmp_path_factory) -> tuple[str, str]:
    data, ckpt = shared
    log = str(tmp_path_factory.mktemp("lin1"))
    proc = run_script(["lincls.py", "--data", data, "--pretrained", ckpt, "--epochs", "1", "--log_path", log,
                       "--lr", "1.0", "--seed", "0", *SMALL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir(log), proc.stdout


def test_one_process_prints_and_writes(one_process_run):
    folder, out = one_process_run
    assert "=> loaded pre-trained model" in out and "query encoder of a pretraining checkpoint" in out
    assert re.search(r"^Epoch: \[0\]\[\d+/5\]\tTime ", out, re.M), out  # 36 images / batch 8 = 5 steps
    assert re.search(r"^Test: \[\d+/2\]\tTime ", out, re.M), out
    (top1, top5), = acc_lines(out)
    result = json.load(open(os.path.join(folder, "linear.json")))
    assert result["epoch"] == 1 and result["images"] == VAL_IMAGES
    assert result["top1"] == pytest.approx(top1, abs=1e-3) and result["top5"] == pytest.approx(top5, abs=1e-3)
    assert top5 == 100.0  # 3 classes: top-5 is capped at 3
    assert os.path.isfile(os.path.join(folder, "checkpoint_last.pth.tar"))
    assert os.path.isfile(os.path.join(folder, "model_best.pth.tar")) == (top1 > 0)
    assert "sanity check passed" in out
    assert not os.path.exists(os.path.join(folder, "run.lock"))  # held while training, released at the end


def test_backbone_frozen_only_fc_trained(shared, one_process_run):
    """Weights and BN running statistics equal the pretrained query encoder's; only fc moved."""
    _, ckpt = shared
    folder, _ = one_process_run
    linear = torch.load(os.path.join(folder, "checkpoint_last.pth.tar"), map_location="cpu", weights_only=False)
    pre = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    state = {k[len("module."):]: v for k, v in linear["state_dict"].items()}
    backbone_keys = [k for k in state if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone_keys) and len(backbone_keys) > 100
    for k in backbone_keys:
        assert torch.equal(state[k], pre["module.encoder_q." + k]), k
    assert state["fc.weight"].shape == (CLASSES, 512)
    assert state["fc.bias"].abs().sum() > 0  # initialised to zero, so it was trained
    groups = linear["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 2
    assert len(linear["optimizer"]["state"]) == 2  # momentum buffers for fc.weight and fc.bias only
    assert linear["epoch"] == 1 and linear["arch"] == "resnet18" and "best_acc1" in linear


def test_resume_continues_in_the_checkpoint_directory(shared, one_process_run, tmp_path):
    import shutil
    data, _ = shared
    folder, _ = one_process_run
    ckpt = str(tmp_path / "checkpoint_last.pth.tar")
    shutil.copyfile(os.path.join(folder, "checkpoint_last.pth.tar"), ckpt)
    proc = run_script(["lincls.py", "--data", data, "--resume", ckpt, "--epochs", "2", "--lr", "1.0", *SMALL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=> loaded checkpoint" in proc.stdout and "(epoch 1)" in proc.stdout
    assert "Epoch: [1]" in proc.stdout and "Epoch: [0]" not in proc.stdout
    assert json.load(open(tmp_path / "linear.json"))["epoch"] == 2
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 2


@pytest.fixture(scope="session")
def torchrun_run(shared, tmp_path_factory) -> tuple[str, str]:
    data, ckpt = shared
    log = str(tmp_path_factory.mktemp("lin2"))
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "lincls.py",
           "--dist-url", "env://", "--data", data, "--pretrained", ckpt, "--epochs", "1", "--log_path", log,
           "--lr", "1.0", *SMALL]
    proc = run_script(cmd, env={"MASTER_PORT": str(free_port())})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir(log), proc.stdout


def test_torchrun_two_processes_count_every_val_image_once(torchrun_run):
    folder, out = torchrun_run
    assert "2 process(es) on cpu" in out and "batch 4 per process" in out
    assert len(acc_lines(out)) == 1  # rank 0 alone prints
    result = json.load(open(os.path.join(folder, "linear.json")))
    assert result["images"] == VAL_IMAGES  # 9 images over 2 ranks: 5 + 4, none padded or repeated
    assert "sanity check passed" in out


def test_evaluate_matches_between_world_sizes(shared, torchrun_run):
    """-e of the torchrun checkpoint in one process gives the same exact accuracy as 2-process validation."""
    data, _ = shared
    folder, out = torchrun_run
    (top1_2p, top5_2p), = acc_lines(out)
    proc = run_script(["lincls.py", "--data", data, "-e", "--resume", os.path.join(folder, "checkpoint_last.pth.tar"),
                       *SMALL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert acc_lines(proc.stdout) == [(top1_2p, top5_2p)]
    result = json.load(open(os.path.join(folder, "evaluate.json")))
    assert result["images"] == VAL_IMAGES and result["epoch"] == 1
    # -e with --pretrained pointing at the linear checkpoint loads the classifier too.
    linear = os.path.join(folder, "checkpoint_last.pth.tar")
    proc = run_script(["lincls.py", "--data", data, "-e", "--pretrained", linear,
                       "--log_path", os.path.join(folder, "eval_log"), *SMALL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "linear-evaluation checkpoint" in proc.stdout and "with fc" in proc.stdout
    assert acc_lines(proc.stdout) == [(top1_2p, top5_2p)]


def test_refuses_checkpoint_without_encoder_weights(shared, tmp_path):
    data, _ = shared
    bad = str(tmp_path / "no_encoder.pth.tar")
    torch.save({"epoch": 3, "state_dict": {"module.encoder_k.conv1.weight": torch.zeros(64, 3, 7, 7),
                                           "module.queue": torch.zeros(128, 64)}}, bad)
    proc = run_script(["lincls.py", "--data", data, "--pretrained", bad, "--epochs", "1",
                       "--log_path", str(tmp_path / "log"), *SMALL])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "no_encoder.pth.tar" in errors[0] and "holds no encoder weights" in errors[0]


@pytest.mark.parametrize("argv, needle", [
    (["-e"], "-e/--evaluate needs a linear checkpoint"),
    (["--pretrained", "/nonexistent.pth"], "--pretrained '/nonexistent.pth': no such checkpoint file"),
    (["--arch", "vgg16"], "--arch 'vgg16' is not supported"),
    (["--knn", "-e", "--resume", __file__], "two different evaluations"),
    (["--resume", "auto"], "--resume auto is main_clsa.py's; here --resume takes the checkpoint file to continue"),
])
def test_bad_flags_exit_2(shared, capsys, argv, needle):
    import lincls
    data, _ = shared
    with pytest.raises(SystemExit) as exc:
        lincls.main(["--data", data, *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_missing_val_folder_exit_2(tmp_path, capsys):
    import lincls
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        lincls.main(["--data", str(tmp_path), "-e", "--resume", __file__])
    assert exc.value.code == 2 and "no 'val/' folder" in capsys.readouterr().err


def test_loader_accepts_torchvision_and_moco_layouts(tmp_path):
    import torchvision
    src = torchvision.models.resnet18(weights=None)
    for name, obj in (("plain", src.state_dict()), ("wrapped", {"state_dict": src.state_dict()}),
                      ("ddp", {"state_dict": {"module." + k: v for k, v in src.state_dict().items()}})):
        path = str(tmp_path / f"{name}.pth")
        torch.save(obj, path)
        model = linear_model("resnet18", 5)
        report = load_encoder_weights(model, path)
        assert report.source == "torchvision" and not report.fc_loaded and report.missing == ["fc.bias", "fc.weight"]
        assert torch.equal(model.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    # MoCo / 2021 CLSA layout: encoder_q with an MLP head, encoder_k and the queue are dropped.
    moco = {"module.encoder_q." + k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    moco.update({"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.encoder_q.fc.2.weight":
                 torch.zeros(128, 512), "module.encoder_k.conv1.weight": torch.ones(64, 3, 7, 7),
                 "module.queue": torch.zeros(128, 16)})
    path = str(tmp_path / "moco.pth.tar")
    torch.save({"state_dict": moco, "epoch": 200, "arch": "resnet18"}, path)
    model = linear_model("resnet18", 5)
    report = load_encoder_weights(model, path)
    assert report.source == "pretraining" and report.epoch == 200 and report.missing == ["fc.bias", "fc.weight"]
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    with pytest.raises(UsageError, match="does not fit the model"):  # shapes differ
        load_encoder_weights(linear_model("resnet50", 5), path)
    with pytest.raises(UsageError, match="does not match the backbone: 80 missing"):  # resnet34 has more blocks
        load_encoder_weights(linear_model("resnet34", 5), path)


def test_linear_model_and_schedule():
    model = linear_model("resnet18", 7)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert model.fc.bias.abs().sum() == 0 and 0.005 < model.fc.weight.std() < 0.015
    assert linear_lr(10.0, 0.01, 0, 100, 1, []) == pytest.approx(10.0)
    assert linear_lr(10.0, 0.01, 50, 100, 1, []) == pytest.approx(0.01 + 0.5 * (10.0 - 0.01))
    assert linear_lr(10.0, 0.01, 100, 100, 1, []) == pytest.approx(0.01)
    assert [linear_lr(10.0, 0.01, e, 40, 0, [15, 25, 30]) for e in (0, 14, 15, 25, 30)] == pytest.approx(
        [10.0, 10.0, 1.0, 0.1, 0.01])


def test_validate_counts_exactly_in_one_process():
    """validate() sums correct counts instead of averaging batch means (batches of unequal size)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x, y = torch.randn(11, 4), torch.randint(0, 3, (11,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    res = validate(net, batches, torch.device("cpu"), 1, lambda s: None)
    expected = (net(x).argmax(1) == y).float().mean().item() * 100
    assert res["images"] == 11 and res["top1"] == pytest.approx(expected)


def test_a_lost_peer_names_the_resume_that_continues(tmp_path):
    """lincls.py / finetune.py have no --resume auto: the lost-peer line names the checkpoint to pass."""
    run_dir = str(tmp_path)
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    fresh = argparse.Namespace(resume="")
    assert lincls.rerun_hint(fresh, run_dir, True) == f"no checkpoint in {run_dir} yet; rerun the same command"
    open(last, "wb").close()
    assert lincls.rerun_hint(fresh, run_dir, True) == (f"the last checkpoint {last} is intact; rerun the same "
                                                       f"command with --resume {last}")
    assert lincls.rerun_hint(argparse.Namespace(resume=last), run_dir, True).endswith("rerun the same command")
    assert lincls.rerun_hint(fresh, run_dir, False) == "rerun the same command"  # kNN, -e: nothing to continue


def test_the_pretraining_lost_peer_line_names_resume_auto(tmp_path):
    """main_clsa.py says the same about the checkpoint (one helper) and continues with --resume auto."""
    import main_clsa

    run_dir = str(tmp_path)
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    named = argparse.Namespace(resume="", run_dir=run_dir)
    assert main_clsa.rerun_hint(named, run_dir) == (f"no checkpoint in {run_dir} yet; rerun the same command "
                                                    "with --resume auto")
    open(last, "wb").close()
    assert main_clsa.rerun_hint(argparse.Namespace(resume="auto", run_dir=run_dir), run_dir) == (
        f"the last checkpoint {last} is intact; rerun the same command")
    unnamed = argparse.Namespace(resume="auto", run_dir="")
    assert main_clsa.rerun_hint(unnamed, run_dir).endswith(f"rerun the same command with --run_dir {run_dir}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
