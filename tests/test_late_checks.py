"""No work is lost to a late check: monitor folders and --resume auto are checked at start, and the epoch's
checkpoint is written before the kNN monitor (which reads files and can fail) runs; the monitor leaves the
training RNG alone, so a run with it logs the losses of the same run without it."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import CPU_OVERRIDES, TINY_CROPS, free_port, logged_losses, run_script, write_image_folder
from fmnist_support import write_tiny_fmnist

import main_clsa


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the run started: the bad input was not refused")
    monkeypatch.setattr(main_clsa, "launch", fail)


def _refused(capsys, argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as e:
        main_clsa.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main_clsa.py: error:") and expected in err[0], err


def _knn_folder(root: str, val_classes: int = 2) -> str:
    write_image_folder(root, classes=2, per_class=4, split="train")
    return write_image_folder(root, classes=val_classes, per_class=2, split="val", seed=1)


def test_knn_data_whose_splits_differ_is_refused_at_start(image_folder, tmp_path, capsys, no_launch):
    knn = _knn_folder(str(tmp_path / "knn"), val_classes=3)
    _refused(capsys, ["--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--knn_data", knn],
             "train/ and val/ have different class folders")


def test_fashion_mnist_knn_data_without_idx_files_is_refused_at_start(tmp_path, capsys, no_launch):
    data = write_tiny_fmnist(str(tmp_path / "fm"), n_train=16, n_test=8)
    empty = tmp_path / "nothing"
    empty.mkdir()
    _refused(capsys, ["--dataset", "FashionMNIST", "--data", data, *CPU_OVERRIDES, *TINY_CROPS,
                      "--knn_data", str(empty)], f"--knn_data '{empty}': no Fashion-MNIST file")


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
def test_resume_auto_with_a_last_checkpoint_that_is_no_file_is_refused(kind, image_folder, tmp_path, capsys,
                                                                        no_launch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    last = run_dir / "checkpoint_last.pth.tar"
    if kind == "directory":
        last.mkdir()
    else:
        last.symlink_to(tmp_path / "elsewhere.pth.tar")
    _refused(capsys, ["--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--resume", "auto",
                      "--run_dir", str(run_dir)], f"--resume auto: {last} is a {kind}")


def test_a_failing_knn_monitor_keeps_the_epochs_checkpoint(image_folder, tmp_path):
    knn = _knn_folder(str(tmp_path / "knn"))
    open(os.path.join(knn, "val", "class0", "zz_empty.jpg"), "wb").close()  # passes the start check, unreadable
    run_dir = str(tmp_path / "run")
    r = run_script(["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--workers", "0",
                    "--max_iters", "1", "--knn_data", knn, "--run_dir", run_dir])
    assert r.returncode != 0 and "zz_empty.jpg" in r.stderr, r.stdout + r.stderr
    ckpt = torch.load(os.path.join(run_dir, "checkpoint_last.pth.tar"), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1


def test_the_knn_monitor_leaves_the_training_rng_alone(image_folder, tmp_path):
    """Two processes with loader workers: shuffle-BN draws its permutation from the RNG the monitor's loaders drew
    from (with --workers 0 the per-sample seeding in the training process reseeds it anyway)."""
    knn = _knn_folder(str(tmp_path / "knn"))
    common = ["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--workers", "1",
              "--epochs", "2", "--max_iters", "1", "--seed", "0", "--cpu_procs", "2"]
    plain = run_script([*common, "--run_dir", str(tmp_path / "plain"), "--dist_url", f"tcp://127.0.0.1:{free_port()}"])
    monitored = run_script([*common, "--run_dir", str(tmp_path / "knn_run"), "--knn_data", knn, "--knn_k", "3",
                            "--dist_url", f"tcp://127.0.0.1:{free_port()}"])
    assert plain.returncode == 0 and monitored.returncode == 0, plain.stderr + monitored.stderr
    assert "kNN top-1" in monitored.stdout
    assert len(logged_losses(plain.stdout)) == 2 and logged_losses(monitored.stdout) == logged_losses(plain.stdout)
    a, b = (torch.load(os.path.join(tmp_path, d, "checkpoint_last.pth.tar"), weights_only=True)["state_dict"]
            for d in ("plain", "knn_run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
