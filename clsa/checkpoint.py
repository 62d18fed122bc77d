"""The one checkpoint kit: the 2021 layout (`module.*` keys), written atomically by rank 0 with the umask's mode,
read safely, the prefix rules (`module.`, `module.encoder_q.`) every reader uses, and save/resume of a run for both
trainers (`save_run_state` / `restore_run_state`, files `checkpoint_last.pth.tar` and `model_best.pth.tar`).

Every file is read with `torch.load(weights_only=True)` and nothing allowed on top: tensors, dicts, lists, tuples,
numbers and strings, nothing that unpickling could turn into code or memory. A file that needs more (also the
earlier format of this project, with numpy RNG state) is refused (`FileProblem`: one line, exit code 2 in the entry
scripts) unless the caller trusts the file; `upgrade_checkpoint.py` rewrites such a file once as plain data.
What we save is plain data (RNG states as tensors and lists, `args` as a dict), so a plain `torch.load(path)` opens
it on any current torch.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from clsa.distributed import broadcast_object, gather_objects, get_rank, get_world_size, is_main_process, unwrap
from ops.atomic import atomic_write
from ops.errors import FileProblem, UsageError

PREFIX = "module."  # DDP's; our checkpoints keep it, as the 2021 ones do
QUERY_PREFIXES = ("module.encoder_q.", "encoder_q.")  # f_q in a CLSA / MoCo pretraining checkpoint


def _unsafe_globals(path: str) -> list[str]:
    """The globals of `path` that weights-only loading refuses ([] for a legacy or damaged file)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy or damaged file: nothing to name
        return []


def load_file(path: str, trust: bool = False) -> Any:
    """The object stored in `path` (.pth/.pth.tar via torch.load, .safetensors as a dict of tensors), on the CPU.

    Raises FileProblem for a missing file, an unreadable one, and, unless `trust`, one that holds anything but
    plain data (naming the Python objects it would have created).
    """
    if not os.path.isfile(path):
        raise FileProblem(path, "does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors
        try:
            return load_safetensors(path, device="cpu")
        except Exception as err:  # noqa: BLE001 - any parse failure means "not a safetensors file"
            raise FileProblem(path, f"is not a readable .safetensors file ({type(err).__name__})") from None
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise FileProblem(path, f"is not a readable checkpoint ({type(err).__name__}: {err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path)
        if not names:
            raise FileProblem(path, "is not a readable checkpoint (it does not unpickle as plain data)") from None
        raise FileProblem(path, f"refused: it holds objects that are not plain data ({', '.join(names[:5])}), and "
                          "unpickling them could run code", not_plain_data=True,
                          earlier_format=any(n.startswith("numpy.") for n in names)) from None
    except Exception as err:  # noqa: BLE001 - any other failure means "not a checkpoint"
        raise FileProblem(path, f"is not a readable checkpoint ({type(err).__name__}: {err})") from None


def prefixed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the `module.` prefix DDP gives, also for an unwrapped model."""
    return {PREFIX + k: v for k, v in unwrap(model).state_dict().items()}


def strip_prefix(state: dict[str, Any], prefix: str = PREFIX) -> dict[str, Any]:
    """`state` with `prefix` removed from the keys that have it (the others unchanged)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_prefixed_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict with or without the `module.` prefix into `model` (strict)."""
    unwrap(model).load_state_dict(strip_prefix(state), strict=True)


def is_pretraining_state(state: dict[str, Any]) -> bool:
    """Whether a state dict is a pretraining checkpoint's (it holds the query encoder f_q)."""
    return any(isinstance(k, str) and k.startswith(QUERY_PREFIXES) for k in state)


def backbone_state(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(backbone keys in torchvision names, whether they are f_q of a pretraining checkpoint).

    The one place for the prefix rules: `module.encoder_q.*` (or `encoder_q.*`) wins, its projection head `fc*`
    included (callers that want a bare backbone drop it); otherwise the `module.` prefix is stripped where present,
    and the key encoder `encoder_k.*`, `queue` and `queue_ptr` never count as backbone weights.
    """
    for prefix in QUERY_PREFIXES:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked, True
    stripped = strip_prefix(state)
    return ({k: v for k, v in stripped.items()
             if not k.startswith(("encoder_k.", "encoder_q.")) and k not in ("queue", "queue_ptr")}, False)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states as plain data: tuples, lists and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`; also the previous format (numpy state with an ndarray)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 1 << 24))


LAST = "checkpoint_last.pth.tar"  # both trainers' latest state (lincls.py wrote checkpoint.pth.tar before)
BEST = "model_best.pth.tar"


def last_checkpoint_state(run_dir: str) -> tuple[str, str | None]:
    """For a lost-peer hint: whether `run_dir` holds LAST (complete: it is written atomically), said in words, and
    its path (None when there is none)."""
    last = os.path.join(run_dir, LAST)
    if os.path.exists(last):
        return f"the last checkpoint {last} is intact", last
    return f"no checkpoint in {run_dir} yet", None


class CheckpointWriteError(UsageError):
    """A checkpoint file could not be written (e.g. a full disk); the message names it and the complete one kept."""


def _write(path: str, write: Callable[[], None], kept: str) -> None:
    try:
        write()
    except OSError as err:
        raise CheckpointWriteError(f"could not write {path} ({err.strerror or err}); {kept}") from None


def save_epoch_checkpoints(state: dict[str, Any], run_dir: str, epoch: int, is_best: bool, save_freq: int) -> str:
    """Write checkpoint_last (always), checkpoint_{epoch:04d} (every `save_freq`-th epoch, as the 2021 code's
    epoch % 10 == 9) and model_best (when `is_best`). `epoch` is the 0-based epoch just finished. A failed write
    raises CheckpointWriteError; every file is replaced atomically, so the one before it stays complete."""
    last = os.path.join(run_dir, LAST)
    kept = f"the previous checkpoint {last} is intact" if os.path.isfile(last) else f"no checkpoint in {run_dir} yet"
    _write(last, lambda: atomic_save(state, last), kept)
    copies = [f"checkpoint_{epoch:04d}.pth.tar"] if save_freq > 0 and epoch % save_freq == save_freq - 1 else []
    for copy in [os.path.join(run_dir, name) for name in copies + ([BEST] if is_best else [])]:
        _write(copy, lambda copy=copy: atomic_copy(last, copy), f"{last} is complete and holds this epoch")
    return last


def save_run_state(state: dict[str, Any], run_dir: str, done_epoch: int, is_best: bool = False, save_freq: int = 0
                   ) -> str:
    """Called by every process: adds each process's RNG state (`rng`, in rank order), rank 0 writes the files of
    save_epoch_checkpoints, and nobody returns before they are complete. When rank 0 could not write them, every
    process raises its CheckpointWriteError. Returns checkpoint_last's path."""
    state = dict(state, rng=gather_objects(rng_state()))
    failed = None
    if is_main_process():
        try:
            save_epoch_checkpoints(state, run_dir, done_epoch, is_best, save_freq)
        except CheckpointWriteError as err:
            failed = str(err)
    failed = broadcast_object(failed)  # also the barrier: rank 0 sends once the files are complete
    if failed:
        raise CheckpointWriteError(failed)
    return os.path.join(run_dir, LAST)


def restore_run_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, trust: bool = False,
                      check: Callable[[dict[str, Any]], None] | None = None, restore_rng: bool = True,
                      fits: str = "this run's model") -> dict[str, Any]:
    """Load a trainer's checkpoint into `model` and `optimizer` after `check(ckpt)` accepts it; with
    `restore_rng`, this process gets back its own RNG state when the run had as many processes. Returns it.

    A readable file whose tensors, optimizer state or RNG states do not fit is refused (FileProblem) saying that it
    does not fit `fits`, with torch's reason."""
    ckpt = load_checkpoint(path, trust)
    if check is not None:
        check(ckpt)
    try:
        load_prefixed_state_dict(model, ckpt["state_dict"])
        if optimizer is not None and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        rngs = ckpt.get("rng")
        if restore_rng and isinstance(rngs, list) and len(rngs) == get_world_size():
            set_rng_state(rngs[get_rank()])
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # torch's message on one line, its start
        raise FileProblem(path, f"does not fit {fits} ({reason[:300]})") from None
    return ckpt


def load_checkpoint(path: str, trust: bool = False) -> dict[str, Any]:
    """Read a training checkpoint safely (see load_file); one without `state_dict` is a FileProblem."""
    ckpt = load_file(path, trust)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise FileProblem(path, "holds no 'state_dict'; expected a main_clsa.py checkpoint")
    return ckpt


def best_acc_value(ckpt: dict[str, Any]) -> float:
    """best_acc (best_acc1 in lincls.py's older files) as a float (the 2021 code saved a CUDA tensor)."""
    value = ckpt.get("best_acc", ckpt.get("best_acc1", 0.0))
    return float(value.item() if torch.is_tensor(value) else value)


COMPAT_FIELDS = ("arch", "moco_dim", "moco_k", "mlp", "sym", "strong_loss")


def check_compatible(ckpt: dict[str, Any], run: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint that is not a pretraining run's position (query encoder, epoch, iteration, best_acc) or
    comes from another kind of run than `run` (this run's COMPAT_FIELDS), naming every differing field.

    Checkpoints with `args` (ours) are compared field by field; older ones (2021 code, MoCo) by arch and queue shape.
    """
    if not is_pretraining_state(ckpt["state_dict"]):
        raise FileProblem(path, "is not a pretraining checkpoint (no 'module.encoder_q.*' keys; a lincls.py "
                          "checkpoint resumes with lincls.py)")
    for key, value in (("epoch", ckpt.get("epoch")), ("iteration", ckpt.get("iteration", 0))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise FileProblem(path, f"has '{key}' = {value!r}, not a count; expected a main_clsa.py checkpoint")
    try:
        best_acc_value(ckpt)
    except (TypeError, ValueError, RuntimeError):
        raise FileProblem(path, "has a 'best_acc' that is not a number") from None
    saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    if not saved:
        saved = {"arch": ckpt.get("arch", run["arch"])}
        queue = ckpt["state_dict"].get(PREFIX + "queue")
        if torch.is_tensor(queue) and queue.dim() == 2:
            saved.update(moco_dim=queue.shape[0], moco_k=queue.shape[1])
    diffs = [f"{k}={saved[k]!r} (this run: {run[k]!r})" for k in COMPAT_FIELDS if k in saved and saved[k] != run[k]]
    if diffs:
        raise FileProblem(path, "comes from an incompatible run: " + ", ".join(diffs))


def auto_resume_path(run_dir: str) -> str:
    """The newest complete checkpoint in `run_dir` ('' when there is none)."""
    last = os.path.join(run_dir, LAST)
    return last if os.path.isfile(last) else ""
