"""The pretrain-and-evaluate path of demo.py and experiments/reproduce.py.

`run_pretraining` runs `main_clsa.py` as a child process with its output streamed, under an optional wall-clock
deadline; `checkpoint_epoch` and `run_state` read what the run left; `evaluate_encoder` scores a pretrained or
random-init encoder on an evaluation folder (kNN + linear probe, experiments/probe.py); `random_init_knn` is the
kNN monitor's random-init reference on the monitor folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import IO

from experiments.probe import eval_sets, evaluate, load_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = "checkpoint_last.pth.tar"


def run_pretraining(argv: list[str], deadline: float | None = None, log: Callable[[str], None] = print,
                    env: dict | None = None, stdout: IO | None = None) -> dict:
    """Run `argv` from the repo root; at `deadline` (time.time() value) send SIGTERM, which makes main_clsa.py save
    a checkpoint and exit 75. Returns {returncode, seconds, stopped_at_deadline}."""
    start = time.time()
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env, stdout=stdout, stderr=subprocess.STDOUT if stdout
                            else None)
    stopped = False
    try:
        while proc.poll() is None:
            if deadline is not None and not stopped and time.time() > deadline:
                log("time budget reached: asking main_clsa.py to stop (it saves a checkpoint first)")
                proc.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return {"returncode": proc.returncode, "seconds": time.time() - start, "stopped_at_deadline": stopped}


def checkpoint_epoch(run_dir: str) -> int:
    """Epochs done by the run in `run_dir` (its checkpoint_last.pth.tar); 0 when there is no checkpoint."""
    from clsa.checkpoint import load_checkpoint
    path = os.path.join(run_dir, CHECKPOINT)
    return int(load_checkpoint(path)["epoch"]) if os.path.isfile(path) else 0


def run_state(run_dir: str) -> dict:
    """{epochs_done, iteration, knn_monitor ([{epoch, top1}] from TensorBoard)} of a finished or stopped run."""
    from clsa.checkpoint import load_checkpoint
    from experiments.demo_report import knn_by_epoch
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    return {"epochs_done": int(state["epoch"]), "iteration": int(state.get("iteration", 0)),
            "knn_monitor": knn_by_epoch(run_dir)}


def evaluate_encoder(arch: str, checkpoint: str | None, seed: int, folder: str, size: int = 32, k: int = 200,
                     t: float = 0.1) -> dict:
    """probe.evaluate of the query encoder of `checkpoint` (None: random init seeded by `seed`) on the Fashion-MNIST
    folder `folder` at `size` px, with `size` added to the result."""
    encoder = load_encoder(arch, checkpoint, seed=seed)
    return {**evaluate(encoder, *eval_sets(folder, size), k, t), "size": size}


def random_init_knn(arch: str, folder: str, size: int = 32, k: int = 200, t: float = 0.1, seed: int = 0) -> dict:
    """KNNMonitor result (top1, top5, k, t, bank, queries, classes, seconds) of `arch` at random init (seeded) on
    the Fashion-MNIST folder `folder`: the reference line of the per-epoch kNN monitor."""
    from clsa.knn import KNNMonitor
    monitor = KNNMonitor(*eval_sets(folder, size), k, t, log=lambda _: None)
    return monitor.evaluate(load_encoder(arch, None, seed=seed))
