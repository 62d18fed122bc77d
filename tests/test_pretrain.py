"""End to end on CPU: the README commands, torchrun with 2 processes, resume, seeding."""

import os
import re

import pytest
import torch
from conftest import (
    CPU_OVERRIDES,
    TINY_CROPS,
    find_checkpoint,
    free_port,
    logged_losses,
    readme_command,
    run_script,
    write_image_folder,
)


def _check_layout(path, arch="resnet18", dim=128, K=64, epoch=1):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    assert ckpt["epoch"] == epoch and ckpt["arch"] == arch and "optimizer" in ckpt
    assert any(k.startswith("module.encoder_q.") for k in sd) and any(k.startswith("module.encoder_k.") for k in sd)
    assert sd["module.queue"].shape == (dim, K) and sd["module.queue_ptr"].dtype == torch.long
    assert "module.encoder_q.fc.0.weight" in sd and "module.encoder_q.fc.2.weight" in sd
    return ckpt


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("sym", [0, 1])
def test_readme_command_trains_on_cpu(kind, sym, tmp_path_factory, tmp_path):
    # One iteration (8 images, batch 8): the 224-px views of the README cost most of this file's time.
    images = write_image_folder(str(tmp_path_factory.mktemp("eight")), per_class=4)
    log_path = str(tmp_path / "log")
    argv = ["main_clsa.py", *readme_command(kind, sym, images), *CPU_OVERRIDES, "--log_path", log_path,
            "--dist_url", f"tcp://127.0.0.1:{free_port()}"]
    r = run_script(argv)
    assert r.returncode == 0, r.stdout + r.stderr
    n_weak = 1 if kind == "single" else 5
    n_info, n_ddm = (n_weak * (1 + sym), n_weak * n_weak * (1 + sym))
    assert f"contrastive loss count {n_info}\tweak strong loss count {n_ddm}" in r.stdout
    assert "Acc@1" in r.stdout and "InfoNCE" in r.stdout and "DDM" in r.stdout and "img/s" in r.stdout
    ckpt = _check_layout(find_checkpoint(log_path))
    assert int(ckpt["state_dict"]["module.queue_ptr"]) == 8  # one iteration of global batch 8 into K = 64
    run_dir = os.path.dirname(find_checkpoint(log_path))
    assert re.search(r"ImageNet/Alpha_1\.0/Aug_5/lr_0\.03/cos_1/\d{6}-\d{6}$", run_dir)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))


def test_torchrun_two_processes_then_resume(image_folder, tmp_path):
    log_path = str(tmp_path / "log")
    common = ["--data", image_folder, *CPU_OVERRIDES, "--log_path", log_path, *TINY_CROPS]
    r = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main_clsa.py",
                    "--dist_url", "env://", *common])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es) on cpu, batch 4 per process (global 8)" in r.stdout
    assert r.stdout.count("run directory:") == 1 and r.stdout.count("epoch 0 done") == 1  # rank 0 alone prints
    runs = os.listdir(os.path.join(log_path, "ImageNet", "Alpha_1", "Aug_5", "lr_0.03", "cos_1"))
    assert len(runs) == 1
    path = find_checkpoint(log_path)
    first = _check_layout(path)
    assert int(first["state_dict"]["module.queue_ptr"]) == 16

    r = run_script(["main_clsa.py", *common, "--resume", path, "--epochs", "3",
                    "--dist_url", f"tcp://127.0.0.1:{free_port()}"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed" in r.stdout and "epoch 1 done" in r.stdout and "epoch 0 done" not in r.stdout
    resumed = _check_layout(path, epoch=3)  # same run directory, same file
    assert int(resumed["state_dict"]["module.queue_ptr"]) == (16 + 2 * 16) % 64
    assert not torch.equal(resumed["state_dict"]["module.queue"], first["state_dict"]["module.queue"])
    assert os.path.exists(os.path.join(os.path.dirname(path), "model_best.pth.tar"))
    log = open(os.path.join(os.path.dirname(path), "train.log")).read()
    assert "epoch 0 done" in log and "epoch 2 done" in log


def test_seed_makes_runs_repeatable(image_folder, tmp_path):
    def run(tag, seed):
        argv = ["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, "--log_path", str(tmp_path / tag),
                *TINY_CROPS, "--seed", str(seed), "--workers", "2"]
        r = run_script(argv)
        assert r.returncode == 0, r.stdout + r.stderr
        return logged_losses(r.stdout)

    a, b, c = run("a", 3), run("b", 3), run("c", 4)
    assert len(a) == 2 and a == b
    assert a != c
