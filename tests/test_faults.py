"""Long runs: preemption + auto-resume, a dying process, bad images, SLURM launch, interrupted writes, NaN."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, find_checkpoint, free_port, read_until, run_script, write_image_folder

import main_clsa
from clsa.checkpoint import atomic_save

SMALL = ["--arch", "resnet18", "--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2",
         "0.086", "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1", "--pick_weak", "0", "--print_freq", "1"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def folder48(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("d48")), classes=2, per_class=24)


def _iter_losses(text: str) -> dict[tuple[int, int], str]:
    return {(int(e), int(i)): loss for e, i, loss in
            re.findall(r"Epoch: \[(\d+)\]\[\s*(\d+)/\d+\].*?Loss (\S+) \(", text)}


def _popen(argv, env=None):
    return subprocess.Popen([sys.executable, "main_clsa.py", *argv], cwd=REPO, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# views gpu: decoded and built in the training process (CPU here); step_checks deferred: the stop is agreed one
# iteration late and every update goes through the device-side guard, as on CUDA
@pytest.mark.parametrize("views,checks", [("cpu", "sync"), ("gpu", "deferred")])
def test_sigterm_then_resume_auto_matches_uninterrupted(folder48, tmp_path, views, checks):
    common = ["--data", folder48, *SMALL, "--batch_size", "4", "--moco_k", "16", "--epochs", "2", "--workers", "1",
              "--seed", "5", "--views", views, "--step_checks", checks]
    ref = run_script(["main_clsa.py", *common, "--run_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stdout + ref.stderr

    run_dir = str(tmp_path / "pre")
    proc = _popen([*common, "--resume", "auto", "--run_dir", run_dir])
    first = read_until(proc, r"Epoch: \[0\]\[\s*4/12\]", timeout=120)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, first + rest
    assert "SIGTERM: saved" in rest
    partial = torch.load(os.path.join(run_dir, "checkpoint_last.pth.tar"), map_location="cpu", weights_only=False)
    assert partial["epoch"] == 0 and 5 <= partial["iteration"] < 12

    resumed = run_script(["main_clsa.py", *common, "--resume", "auto", "--run_dir", run_dir])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"iteration {partial['iteration']}" in resumed.stdout
    expected, got = _iter_losses(ref.stdout), {**_iter_losses(first + rest), **_iter_losses(resumed.stdout)}
    assert len(expected) == 24 and got == expected

    a = torch.load(os.path.join(tmp_path / "ref", "checkpoint_last.pth.tar"), map_location="cpu", weights_only=False)
    b = torch.load(os.path.join(run_dir, "checkpoint_last.pth.tar"), map_location="cpu", weights_only=False)
    torch.testing.assert_close(a["state_dict"]["module.queue"], b["state_dict"]["module.queue"])
    assert int(a["state_dict"]["module.queue_ptr"]) == int(b["state_dict"]["module.queue_ptr"])


def test_resume_auto_starts_fresh_without_a_checkpoint(image_folder, tmp_path):
    run_dir = str(tmp_path / "fresh")
    r = run_script(["main_clsa.py", "--data", image_folder, *SMALL, "--batch_size", "8", "--moco_k", "16",
                    "--epochs", "1", "--workers", "0", "--resume", "auto", "--run_dir", run_dir])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed" not in r.stdout and os.path.exists(os.path.join(run_dir, "checkpoint_last.pth.tar"))


def _spawned_workers(pid: int) -> list[int]:
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    out = []
    for c in children:
        try:
            cmd = open(f"/proc/{c}/cmdline").read()
        except FileNotFoundError:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(int(c))
    return sorted(out)


def test_kill_rank1_exits_nonzero_quickly_and_last_checkpoint_loads(folder48, tmp_path):
    run_dir = str(tmp_path / "kill")
    proc = _popen(["--data", folder48, *SMALL, "--batch_size", "4", "--moco_k", "16", "--epochs", "20",
                   "--workers", "0", "--cpu_procs", "2", "--run_dir", run_dir,
                   "--dist_url", f"tcp://127.0.0.1:{free_port()}", "--dist_timeout", "1"])
    read_until(proc, r"saved .*checkpoint_last", timeout=120)
    read_until(proc, r"Epoch: \[1\]\[\s*1/", timeout=120)
    workers = _spawned_workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    start = time.time()
    proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - start < 60
    ckpt = torch.load(os.path.join(run_dir, "checkpoint_last.pth.tar"), map_location="cpu", weights_only=False)
    assert ckpt["epoch"] >= 1 and "module.queue" in ckpt["state_dict"]


@pytest.mark.parametrize("views", ["cpu", "gpu"])
def test_unreadable_images_are_skipped_and_counted(tmp_path, views):
    root = write_image_folder(str(tmp_path / "bad"), classes=2, per_class=7)
    truncated = os.path.join(root, "train", "class0", "truncated.jpg")
    good = open(os.path.join(root, "train", "class0", "0.jpg"), "rb").read()
    open(truncated, "wb").write(good[: len(good) // 2])
    empty = os.path.join(root, "train", "class1", "empty.jpg")
    open(empty, "wb").close()
    r = run_script(["main_clsa.py", "--data", root, *SMALL, "--batch_size", "8", "--moco_k", "16", "--epochs", "1",
                    "--workers", "1", "--log_path", str(tmp_path / "log"), "--views", views])
    assert r.returncode == 0, r.stdout + r.stderr
    summary = [line for line in r.stdout.splitlines() if "skipped 2 unreadable image(s)" in line]
    assert len(summary) == 1 and truncated in summary[0] and empty in summary[0]

    strict = run_script(["main_clsa.py", "--data", root, *SMALL, "--batch_size", "8", "--moco_k", "16",
                         "--epochs", "1", "--workers", "0", "--log_path", str(tmp_path / "log2"), "--strict_data",
                         "--views", views])
    assert strict.returncode != 0 and "unreadable image" in strict.stdout + strict.stderr


def test_slurm_variables_start_a_two_process_job(image_folder, tmp_path):
    port, run_dir = free_port(), str(tmp_path / "slurm")
    procs = []
    for rank in range(2):
        env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NTASKS_PER_NODE="2",
                   SLURM_NODELIST="localhost", MASTER_PORT=str(port))
        procs.append(_popen(["--data", image_folder, *SMALL, "--batch_size", "8", "--moco_k", "16", "--epochs", "1",
                             "--workers", "0", "--dist_url", "env://", "--run_dir", run_dir], env=env))
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 process(es) on cpu, batch 4 per process (global 8)" in outs[0]
    assert "run directory" not in outs[1]  # rank 1 prints nothing of its own
    ckpt = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["module.queue_ptr"]) == 16 % 16 and len(ckpt["rng"]) == 2


def test_interrupted_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_last.pth.tar")
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint_last.pth.tar"]


@pytest.mark.parametrize("checks", ["sync", "deferred"])  # deferred: found one iteration late
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path, checks):
    """--lr 1e38 (finite: --lr inf is refused at start) overflows the weights; deferred checks find it one
    iteration late and undo the update."""
    run_dir = str(tmp_path / "nan")
    common = ["--data", image_folder, *SMALL, "--batch_size", "8", "--moco_k", "16", "--workers", "0",
              "--run_dir", run_dir, "--step_checks", checks]
    assert run_script(["main_clsa.py", *common, "--epochs", "1"]).returncode == 0
    r = run_script(["main_clsa.py", *common, "--epochs", "2", "--resume", "auto", "--lr", "1e38"])
    assert r.returncode == 3, r.stdout + r.stderr
    assert re.search(r"non-finite loss at epoch 1 iteration 1; the last good checkpoint is .*checkpoint_last", r.stdout)
    assert torch.load(os.path.join(run_dir, "checkpoint_last.pth.tar"), weights_only=False)["epoch"] == 1

    r = run_script(["main_clsa.py", *common, "--epochs", "2", "--resume", "auto", "--lr", "1e38",
                    "--skip_nonfinite"])
    assert r.returncode == 0 and "step skipped (skip_nonfinite)" in r.stdout


@pytest.mark.parametrize("flags,named", [(["--arch", "resnet34"], "arch='resnet18' (this run: 'resnet34')"),
                                          (["--moco_k", "32"], "moco_k=16 (this run: 32)")])
def test_incompatible_checkpoint_is_refused(flags, named, image_folder, tmp_path, capsys):
    run_dir = str(tmp_path / "inc")
    common = ["--data", image_folder, *SMALL, "--batch_size", "8", "--moco_k", "16", "--workers", "0",
              "--epochs", "1", "--run_dir", run_dir]
    assert run_script(["main_clsa.py", *common]).returncode == 0
    with pytest.raises(SystemExit) as e:
        main_clsa.main([*common, "--resume", os.path.join(run_dir, "checkpoint_last.pth.tar"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "incompatible run" in err and named in err
