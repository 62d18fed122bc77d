"""Label-efficient evaluation of an encoder on Fashion-MNIST: fine-tune every layer with 1 % and 10 % of the train
labels (finetune.py, SimCLR's semi-supervised protocol scaled to 28-px images and 2 CPU cores), test on the 10,000
test images.

Folders (written once by `prepare_folders`, class-balanced, seeded):
- `ft_full/`: all 60,000 train images (the pool of the labelled draws) and the 10,000 test images;
- `ft_tune/`: 54,000 train images as its train split and the other 6,000 train images as its "t10k" split: the
  held-out part on which the lr is chosen. The test split is never read while tuning.

Per encoder (`finetune_encoder`), every run a `finetune.py` child process with `--eval-freq 0` (one validation, after
the last epoch: the reported model is the final one, never one picked on the test set):
1. the lr: each base lr of `Protocol.base_lrs` (per 256 images, linearly scaled to the batch as SimCLR does) on the
   1 % draw `tune_seed` of ft_tune's train split, scored on its 6,000 held-out images; the best is kept;
2. with that lr, the 1 % draws `draws_1pct` and the 10 % draws `draws_10pct` of ft_full's train split, each
   scored on the 10,000 test images.
Each finished run's record is cached in `<out_dir>/<run>.json`, so an interrupted evaluation resumes where it was.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from experiments import fmnist_data
from ops.atomic import write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD_OUT = 6000  # train images held out of ft_tune's train split for choosing the lr


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What every encoder gets (recorded with its result). SimCLR: Nesterov SGD, no weight decay, random resized
    crop + flip, base lr 0.05 per 256 images, 60 epochs at 1 % and 30 at 10 %; here fewer epochs at 10 % and a small
    batch, so that one encoder takes about 20 minutes on 2 CPU cores."""
    batch: int = 64
    epochs_1pct: int = 20
    epochs_10pct: int = 4
    base_lrs: tuple[float, ...] = (0.025, 0.05, 0.1)  # SimCLR's 0.05 and one step either side
    draws_1pct: tuple[int, ...] = (0, 1, 2)
    draws_10pct: tuple[int, ...] = (0,)
    tune_seed: int = 100
    size: int = 32  # train crop and test image size (px), the reproduction's pretraining and probe size
    workers: int = 1


def prepare_folders(source: str, root: str, seed: int = 0, held_out: int = HELD_OUT) -> dict[str, str]:
    """ft_full/ and ft_tune/ (`held_out` train images as its test split) under `root` from the Fashion-MNIST folder
    `source`; kept when already written."""
    folders = {"full": os.path.join(root, "ft_full"), "tune": os.path.join(root, "ft_tune")}
    if all(os.path.isfile(os.path.join(f, "t10k-labels-idx1-ubyte.gz")) for f in folders.values()):
        return folders
    (xtr, ytr), test = fmnist_data.load_split(source, "train"), fmnist_data.load_split(source, "t10k")
    held = fmnist_data.stratified(ytr, held_out, np.random.default_rng(seed))
    rest = np.setdiff1d(np.arange(len(ytr)), held)
    fmnist_data.write_split_folder(folders["full"], (xtr, ytr), test)
    fmnist_data.write_split_folder(folders["tune"], (xtr[rest], ytr[rest]), (xtr[held], ytr[held]))
    return folders


def finetune_argv(folder: str, checkpoint: str | None, fraction: float, subset_seed: int, epochs: int,
                  base_lr: float, seed: int, log_path: str, p: Protocol) -> list[str]:
    """The finetune.py command of one run (random init, seeded by `seed`, when `checkpoint` is None)."""
    encoder = ["--pretrained", checkpoint] if checkpoint else ["--random-init"]
    return [sys.executable, "finetune.py", "--dataset", "FashionMNIST", "--data", folder, *encoder,
            "--label-fraction", str(fraction), "--subset-seed", str(subset_seed), "-a", "resnet18",
            "-b", str(p.batch), "--lr", str(base_lr), "--epochs", str(epochs), "--train-crop", str(p.size),
            "--val-resize", str(p.size), "--val-crop", str(p.size), "-j", str(p.workers), "--seed", str(seed),
            "--eval-freq", "0", "-p", "1000", "--log_path", log_path]


def remove_checkpoints(log_path: str) -> None:
    """Delete the *.pth.tar files under one fine-tuning run's `log_path`."""
    for path in glob.glob(os.path.join(log_path, "**", "*.pth.tar"), recursive=True):
        os.remove(path)


def run_finetune(argv: list[str], record_path: str, log: Callable[[str], None]) -> dict:
    """Run one finetune.py command (or read its cached record): {top1, lr, epochs, images, seconds, command}.
    Once the record is written the run's checkpoints go (about 170 MB per resnet18 run, 7 runs per encoder); its
    log, finetune.json and train_subset.txt stay."""
    log_path = argv[argv.index("--log_path") + 1]
    if os.path.isfile(record_path):
        remove_checkpoints(log_path)  # also those of a run stopped between its record and their removal
        with open(record_path) as f:
            return json.load(f)
    start = time.time()
    proc = subprocess.run(argv, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True)
    found = sorted(glob.glob(os.path.join(log_path, "Semisup_log", "*", "finetune.json")))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"finetune.py exited with {proc.returncode}:\n{tail}")
    with open(found[-1]) as f:
        result = json.load(f)
    record = {"top1": result["top1"], "top5": result["top5"], "epoch": result["epoch"], "lr": result["lr"],
              "base_lr": result["base_lr"], "train_images": result["train_images"], "images": result["images"],
              "subset": result["subset"], "seconds": time.time() - start, "command": " ".join(argv[1:])}
    write_json(record_path, record)
    remove_checkpoints(log_path)
    log(f"  fine-tune {os.path.basename(record_path)[:-5]}: top-1 {record['top1']:.2f} "
        f"({record['train_images']} labelled images, {record['seconds'] / 60:.1f} min)")
    return record


def finetune_encoder(checkpoint: str | None, seed: int, folders: dict[str, str], out_dir: str,
                     p: Protocol = Protocol(), log: Callable[[str], None] = print) -> dict:
    """Tune the lr on the held-out train images, then fine-tune on the 1 % and 10 % draws; see the module doc."""
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)

    def one(name: str, folder: str, fraction: float, subset_seed: int, epochs: int, base_lr: float) -> dict:
        argv = finetune_argv(folder, checkpoint, fraction, subset_seed, epochs, base_lr, seed,
                             os.path.join(out_dir, "runs", name), p)
        return run_finetune(argv, os.path.join(out_dir, name + ".json"), log)

    tune = {lr: one(f"tune_lr{lr:g}", folders["tune"], 0.01, p.tune_seed, p.epochs_1pct, lr)["top1"]
            for lr in p.base_lrs}
    best = max(tune, key=lambda lr: (tune[lr], -lr))  # a tie goes to the smaller lr
    pct1 = [one(f"pct1_s{s}", folders["full"], 0.01, s, p.epochs_1pct, best)["top1"] for s in p.draws_1pct]
    pct10 = [one(f"pct10_s{s}", folders["full"], 0.1, s, p.epochs_10pct, best)["top1"] for s in p.draws_10pct]
    return {"protocol": dataclasses.asdict(p), "holdout_top1_by_base_lr": {str(k): v for k, v in tune.items()},
            "base_lr": best, "pct1_top1": pct1, "pct1_mean": statistics.fmean(pct1), "pct10_top1": pct10,
            "pct10_mean": statistics.fmean(pct10), "seconds_this_invocation": time.time() - start}


def finetune_pair(checkpoint: str, seed: int, folder: str, out_dir: str, fraction: float, epochs: int,
                  base_lr: float, p: Protocol, log: Callable[[str], None] = print) -> dict:
    """The demo's comparison: `checkpoint` and the random init seeded by `seed`, each fine-tuned once with the same
    lr on the same labelled draw (`fraction` of `folder`'s train split, subset seed `seed`), tested on its test
    split. Records of an earlier call in `out_dir` are discarded first (they belong to another pretraining)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    runs = {}
    for name, path in (("clsa", checkpoint), ("random_init", None)):
        argv = finetune_argv(folder, path, fraction, seed, epochs, base_lr, seed, os.path.join(out_dir, name), p)
        runs[name] = run_finetune(argv, os.path.join(out_dir, name + ".json"), log)
    return {"fraction": fraction, "epochs": epochs, "base_lr": base_lr, "batch": p.batch,
            "labelled": runs["clsa"]["train_images"], "test_images": runs["clsa"]["images"], **runs}
