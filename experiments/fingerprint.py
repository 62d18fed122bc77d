#!/usr/bin/env python3
"""Bit-for-bit fingerprint of seeded few-iteration pretraining runs, to compare two commits of a refactoring.

    python experiments/fingerprint.py OUT.json           # at one commit
    python experiments/fingerprint.py OUT2.json --compare OUT.json

Runs of `main_clsa.py` on the same small generated image folder, --seed 0, 2 epochs of 3 iterations, 1 loader
worker: single-crop, multi-crop, single-crop with --sym 1, single-crop with --views gpu (on the CPU device), and
single-crop in 2 CPU processes (gloo; `--runs` picks some). Recorded per run: every logged
loss/InfoNCE/DDM value as printed, and a sha256 of each tensor of the final checkpoint (weights, queue, optimizer
momentum, RNG states). Paths in the checkpoint's `args` are left out. Equal fingerprints mean the same computation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from clsa.checkpoint import load_file  # noqa: E402 - after the path to the repository is known

COMMON = ["--arch", "resnet18", "--batch_size", "8", "--moco_k", "64", "--epochs", "2", "--max_iters", "3",
          "--workers", "1", "--print_freq", "1", "--seed", "0", "--lr", "0.03", "--multiprocessing_distributed", "0"]
RUNS = {
    "single": ["--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.086",
               "--max_scale_crops", "1.0", "0.429", "--pick_weak", "0", "--pick_strong", "1"],
    "multi": ["--nmb_crops", "1", "1", "1", "--size_crops", "32", "24", "16", "--min_scale_crops", "0.2", "0.143",
              "0.086", "--max_scale_crops", "1.0", "0.715", "0.429", "--pick_weak", "0", "1", "--pick_strong", "1",
              "2"],
}
RUNS["sym"] = RUNS["single"] + ["--sym", "1"]
RUNS["views_gpu"] = RUNS["single"] + ["--views", "gpu"]
RUNS["gloo2"] = RUNS["single"] + ["--multiprocessing_distributed", "1", "--cpu_procs", "2"]
LOSS = re.compile(r"(Loss|InfoNCE|DDM) (\S+) \(")


def write_images(root: str) -> None:
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(os.path.join(root, "train", f"class{c}"), exist_ok=True)
        for i in range(24):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            img[..., c] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
            Image.fromarray(img).save(os.path.join(root, "train", f"class{c}", f"{i}.png"))


def tensors(obj, prefix: str = ""):
    """(dotted name, tensor) for every tensor under `obj` (dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if prefix == "" and k == "args":
                continue
            yield from tensors(obj[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint(work: str, runs: list[str]) -> dict:
    data = os.path.join(work, "data")
    write_images(data)
    out = {}
    for name in runs:
        run_dir = os.path.join(work, name)
        argv = [sys.executable, "main_clsa.py", "--data", data, "--run_dir", run_dir, *COMMON, *RUNS[name],
                "--dist_url", f"tcp://127.0.0.1:{free_port()}"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: main_clsa.py exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr}")
        losses = [f"{k}={v}" for line in done.stdout.splitlines() if "Epoch: [" in line
                  for k, v in LOSS.findall(line)]
        ckpt = load_file(os.path.join(run_dir, "checkpoint_last.pth.tar"))
        sums = {k: hashlib.sha256(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
                for k, t in tensors(ckpt) if t.numel() and t.dtype != torch.bool}
        out[name] = {"losses": losses, "tensors": sums, "epoch": int(ckpt["epoch"])}
        print(f"{name}: {len(losses) // 3} iterations, {len(sums)} tensors; first loss {losses[0]}", flush=True)
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for name in [r for r in RUNS if r in a and r in b]:
        same_loss = a[name]["losses"] == b[name]["losses"]
        diff = sorted(k for k in set(a[name]["tensors"]) | set(b[name]["tensors"])
                      if a[name]["tensors"].get(k) != b[name]["tensors"].get(k))
        print(f"{name}: losses {'identical' if same_loss else 'DIFFER'} ({len(a[name]['losses'])} values); "
              f"checkpoint tensors {'identical' if not diff else 'DIFFER: ' + ', '.join(diff[:8])} "
              f"({len(a[name]['tensors'])} tensors)")
        bad += (not same_loss) + bool(diff)
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where to write this commit's fingerprint (JSON)")
    p.add_argument("--compare", default="", help="an earlier fingerprint to compare against (runs in both)")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default: all)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = fingerprint(work, args.runs)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            return compare(json.load(f), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
