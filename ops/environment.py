"""Process environment: devices, seeds, file limits, stop signals in loader workers."""

from __future__ import annotations

import os
import random
import resource
import signal

import numpy as np
import torch

from ops.stop_signals import STOP_SIGNALS


def raise_file_limit(target: int = 4096) -> None:
    """Raise the soft RLIMIT_NOFILE towards `target`, never above the hard limit (the 2021 code could raise)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def use_cuda(device: str) -> bool:
    """'auto' picks CUDA when a GPU is visible."""
    if device == "cuda" and not torch.cuda.is_available():
        from ops.errors import UsageError
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def seed_everything(seed: int | None, rank: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch with seed + rank (no-op without a seed)."""
    if seed is None:
        torch.backends.cudnn.benchmark = True
        return
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive python and numpy seeds from the worker's torch seed.

    torch seeds each worker with base_seed + worker_id, where base_seed comes from the (seeded) main process, so
    RandAugment's numpy and python draws differ across workers, ranks and epochs yet repeat for a given --seed.
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def cpu_threads_per_process(procs: int) -> int:
    """Split the machine's cores between co-located processes."""
    return max(1, (os.cpu_count() or 1) // max(1, procs))


def loader_worker_init(worker_id: int) -> None:
    """worker_init_fn for every loader: seeds (see `seed_worker`) and leaves stop signals to the main process."""
    seed_worker(worker_id)
    ignore_stop_signals()


def ignore_stop_signals() -> None:
    """For DataLoader workers: the main process decides when to stop and tears the workers down."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def keep_freed_memory() -> bool:
    """glibc only: keep freed memory in the process (no mmap for big blocks, no trimming), so CPU training steps
    reuse it instead of page-faulting it in again every step. Returns whether it took effect."""
    import ctypes
    import ctypes.util
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-4, 0)) and bool(mallopt(-1, -1))  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD = -1 (off)
