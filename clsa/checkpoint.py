"""Checkpoints in the 2021 layout (`module.*` keys), written atomically by rank 0 only."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ops.errors import UsageError

PREFIX = "module."


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def prefixed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the `module.` prefix DDP gives, also for an unwrapped model."""
    return {PREFIX + k: v for k, v in unwrap(model).state_dict().items()}


def load_prefixed_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict with or without the `module.` prefix into `model` (strict)."""
    stripped = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}
    unwrap(model).load_state_dict(stripped, strict=True)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    An interrupted write leaves the previous `path` untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_epoch_checkpoints(state: dict[str, Any], run_dir: str, epoch: int, is_best: bool, save_freq: int) -> str:
    """Write checkpoint_last (always), checkpoint_{epoch:04d} (every `save_freq`-th epoch, as the 2021 code's
    epoch % 10 == 9) and model_best (when `is_best`). `epoch` is the 0-based epoch just finished."""
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    atomic_save(state, last)
    if save_freq > 0 and epoch % save_freq == save_freq - 1:
        atomic_copy(last, os.path.join(run_dir, f"checkpoint_{epoch:04d}.pth.tar"))
    if is_best:
        atomic_copy(last, os.path.join(run_dir, "model_best.pth.tar"))
    return last


def load_checkpoint(path: str, flag: str = "--resume") -> dict[str, Any]:
    """Load on CPU; a file that is not a checkpoint dict with `state_dict` is refused with one line."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UsageError(f"{flag} {path!r} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"{flag} {path!r} holds no 'state_dict'; expected a main_clsa.py checkpoint")
    return ckpt


def best_acc_value(ckpt: dict[str, Any]) -> float:
    """best_acc as a float (the 2021 code saved a CUDA tensor)."""
    value = ckpt.get("best_acc", 0.0)
    return float(value.item() if torch.is_tensor(value) else value)


COMPAT_FIELDS = ("arch", "moco_dim", "moco_k", "mlp", "sym")


def check_compatible(ckpt: dict[str, Any], args: Any, path: str) -> None:
    """Refuse a checkpoint from another kind of run, naming every differing field.

    Checkpoints with `args` (ours) are compared field by field; older ones (2021 code, MoCo) by arch and queue shape.
    """
    saved = ckpt.get("args") or {}
    if not saved:
        saved = {"arch": ckpt.get("arch", args.arch)}
        queue = ckpt["state_dict"].get(PREFIX + "queue")
        if queue is not None:
            saved.update(moco_dim=queue.shape[0], moco_k=queue.shape[1])
    diffs = [f"{k}={saved[k]!r} (this run: {getattr(args, k)!r})" for k in COMPAT_FIELDS
             if k in saved and saved[k] != getattr(args, k)]
    if diffs:
        raise UsageError(f"--resume {path!r} comes from an incompatible run: " + ", ".join(diffs))


def auto_resume_path(run_dir: str) -> str:
    """The newest complete checkpoint in `run_dir` ('' when there is none)."""
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    return last if os.path.isfile(last) else ""
