"""Shared fixtures: small real image folders, free ports, running the entry scripts as users do."""

from __future__ import annotations

import glob
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The paper README's four pretraining commands (the --sym 1 pair is the same with --sym 1).
README_SINGLE = (
    "--data=[data_path] --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 --weight_decay=1e-4 "
    "--print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 --moco_dim=128 --moco_k=65536 "
    "--moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 --nmb_crops 1 1 --size_crops 224 96 "
    "--min_scale_crops 0.2 0.086 --max_scale_crops 1.0 0.429 --pick_strong 1 --pick_weak 0 --clsa_t 0.2 --sym 0")
README_MULTI = (
    "--data=[data_path] --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 --weight_decay=1e-4 "
    "--print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 --moco_dim=128 --moco_k=65536 "
    "--moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 --nmb_crops 1 1 1 1 1 --size_crops 224 192 160 128 96 "
    "--min_scale_crops 0.2 0.172 0.143 0.114 0.086 --max_scale_crops 1.0 0.86 0.715 0.571 0.429 "
    "--pick_strong 0 1 2 3 4 --pick_weak 0 1 2 3 4 --clsa_t 0.2 --sym 0")


def readme_command(kind: str, sym: int, data: str) -> list[str]:
    """One of the four README commands as argv, with a real --data."""
    text = README_SINGLE if kind == "single" else README_MULTI
    return text.replace("[data_path]", data).replace("--sym 0", f"--sym {sym}").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_image_folder(root: str, classes: int = 2, per_class: int = 8, size: tuple[int, int] = (48, 40),
                       split: str = "train", seed: int = 0) -> str:
    """Write <root>/<split>/<class>/<i>.jpg: coloured noise over a class-specific gradient."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, split, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            h, w = size[1], size[0]
            base = np.zeros((h, w, 3), np.float32)
            base[..., c % 3] = np.linspace(0, 255, w)[None, :]
            img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(folder, f"{i}.jpg"), quality=90)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    """16 training images in 2 classes (two batches of 8)."""
    return write_image_folder(str(tmp_path_factory.mktemp("imgs")))


CPU_OVERRIDES = ["--arch", "resnet18", "--batch_size", "8", "--moco_k", "64", "--epochs", "1", "--workers", "1",
                 "--print_freq", "1"]
# Single-crop at tiny sizes: key and weak view 32 px, strong view 16 px.
TINY_CROPS = ["--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
              "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1", "--pick_weak", "0"]


def logged_losses(stdout: str) -> list[float]:
    """The per-iteration losses of main_clsa.py's progress lines (`--print_freq 1`)."""
    return [float(x) for x in re.findall(r"Loss (\S+) \(", stdout)]


def run_script(argv: list[str], timeout: int = 600, env: dict | None = None, cwd: str = REPO
               ) -> subprocess.CompletedProcess:
    """Run `python <argv>` from the repo root and capture its output. The timeout is generous: on 2 cores shared by
    4 pytest workers a process can take 2-3x its quiet time, and a timeout is a failure nobody can read."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def find_checkpoint(log_path: str, name: str = "checkpoint_last.pth.tar") -> str:
    found = glob.glob(os.path.join(log_path, "**", name), recursive=True)
    assert len(found) == 1, f"expected one {name} under {log_path}, found {found}"
    return found[0]


def read_until(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> str:
    """Lines of `proc`'s stdout up to and including the first matching `pattern`; fails after `timeout` s or EOF."""
    seen, deadline = "", time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"never saw {pattern!r}:\n{seen}")


def pretraining_shaped_checkpoint(path: str, arch: str = "resnet18") -> str:
    """A checkpoint with a pretraining run's layout (untrained torchvision weights as `module.encoder_q.*`, arch,
    epoch, args) for tests of the readers: no training run needed."""
    import torch
    import torchvision
    weights = torchvision.models.get_model(arch).state_dict()
    torch.save({"epoch": 1, "arch": arch, "args": {"arch": arch},
                "state_dict": {"module.encoder_q." + k: v for k, v in weights.items()}}, path)
    return path


# `make test` runs the files on 2 pytest-xdist workers, a file at a time per worker (--dist loadfile), handed out in
# collection order (--no-loadscope-reorder: by default xdist re-sorts the files by their number of tests, which put
# the two-node and --compile files last): the longest files go first (measured on 2 AVX2 cores), so that the end is
# not one long file running alone on one worker while the other idles.
LONGEST_FIRST = ("test_two_nodes.py", "test_faults.py", "test_checkpoints.py", "test_bench.py", "test_compile.py",
                 "test_pretrain.py", "test_one_line_errors.py", "test_finetune.py", "test_finetune_eval.py",
                 "test_output_paths.py", "test_detection_train.py", "test_view_plan.py", "test_strong_loss.py",
                 "test_late_checks.py", "test_demo.py", "test_lincls.py", "test_knn.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
