"""Convert a CLSA / MoCo pretraining checkpoint (or a torchvision ResNet) into detectron2's pickle format.

Used by ``convert-pretrain-to-detectron2.py IN OUT``; importable so that tests can call the pieces.

Accepted inputs (all loaded on the CPU):
- a pretraining checkpoint of this project, of the original CLSA code or of MoCo: a ``torch.save`` dict whose
  ``state_dict`` holds ``module.encoder_q.*`` (the query encoder, a torchvision ResNet), ``module.encoder_k.*``,
  ``module.queue`` and ``module.queue_ptr``. Only the query encoder is kept;
- a plain torchvision ResNet state_dict, bare or wrapped in a dict under ``state_dict`` or ``model``
  (a ``module.`` prefix left by DistributedDataParallel is stripped).

The renaming is MoCo's (see the design notes, clsa-reference.md section 8): keys without ``layer`` get a ``stem.``
prefix (this also turns the projection head into harmless ``stem.fc.*`` entries that detectron2 ignores),
``layer1..4`` become ``res2..5``, ``bnK`` becomes ``convK.norm``, ``downsample.0``/``downsample.1`` become
``shortcut``/``shortcut.norm``. The output is ``{"model": {name: ndarray}, "__author__": "MOCO",
"matching_heuristics": True}``; the last flag makes detectron2 match names heuristically (``res5.*`` lands in the
C4 model's ``roi_heads.res5``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np
import torch

from clsa.checkpoint import QUERY_PREFIXES, backbone_state, load_file
from ops.argparser import naming_flag
from ops.atomic import atomic_write
from ops.errors import UsageError
from ops.validate import check_output_file

AUTHOR = "MOCO"

# A state dict counts as a ResNet encoder when it holds the stem and the first block of every stage.
REQUIRED_KEYS = (
    "conv1.weight",
    "bn1.weight",
    "layer1.0.conv1.weight",
    "layer2.0.conv1.weight",
    "layer3.0.conv1.weight",
    "layer4.0.conv1.weight",
)


class ConversionError(Exception):
    """The input cannot be converted; the message is one line meant for the user."""


def load_checkpoint(path: str, trust: bool = False) -> object:
    """Read ``path`` on the CPU, weights only (clsa.checkpoint.load_file: a file holding anything but tensors and
    plain Python values is refused unless ``trust``); ``.safetensors`` files too. Raises ConversionError."""
    try:
        with naming_flag("IN"):
            return load_file(path, trust)
    except UsageError as err:
        raise ConversionError(str(err)) from None


def _is_resnet(state: Mapping[str, object]) -> bool:
    return all(isinstance(state.get(k), torch.Tensor) for k in REQUIRED_KEYS)


def extract_encoder(obj: object, source: str = "input") -> dict[str, torch.Tensor]:
    """Return the ResNet encoder's state dict (torchvision names, no prefix) held by a loaded checkpoint.

    Looks, in order, at the ``module.encoder_q.`` keys of a pretraining checkpoint, then at a plain ResNet state
    dict (optionally with a ``module.`` prefix), each either bare or under ``state_dict`` / ``model``.
    Raises ConversionError naming ``source`` when no ResNet encoder is found.
    """
    candidates: list[Mapping] = []
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                candidates.append(obj[key])
        candidates.append(obj)
    for state in candidates:
        encoder, _ = backbone_state({k: v for k, v in state.items() if isinstance(k, str)})
        if _is_resnet(encoder):
            return {k: v for k, v in encoder.items() if isinstance(v, torch.Tensor)}
    raise ConversionError(
        f"{source}: no ResNet encoder found (expected keys like '{QUERY_PREFIXES[0]}layer1.0.conv1.weight' "
        "or 'layer1.0.conv1.weight')"
    )


def rename_key(key: str) -> str:
    """Map one torchvision ResNet key to its detectron2 name (MoCo's renaming, applied in the same order)."""
    new = key
    if "layer" not in new:
        new = "stem." + new
    for stage in (1, 2, 3, 4):
        new = new.replace(f"layer{stage}", f"res{stage + 1}")
    for k in (1, 2, 3):
        new = new.replace(f"bn{k}", f"conv{k}.norm")
    new = new.replace("downsample.0", "shortcut")
    new = new.replace("downsample.1", "shortcut.norm")
    return new


def convert_state_dict(encoder: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename every tensor of a torchvision ResNet state dict and turn it into a numpy array (0-d included)."""
    return {rename_key(k): v.detach().cpu().numpy() for k, v in encoder.items()}


def build_payload(model: dict[str, np.ndarray]) -> dict[str, object]:
    """The object detectron2's DetectionCheckpointer reads from a ``.pkl`` file."""
    return {"model": model, "__author__": AUTHOR, "matching_heuristics": True}


def write_pickle_atomic(payload: object, out_path: str) -> None:
    """Pickle ``payload`` to a temporary file next to ``out_path``, then rename it into place (umask's mode)."""
    atomic_write(out_path, lambda f: pickle.dump(payload, f))


def check_bottleneck(encoder: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a ResNet of basic blocks (resnet18/34): the C4 configs here build bottleneck stages only."""
    if not any(".conv3." in k or ".bn3." in k for k in encoder if k.startswith("layer")):
        raise ConversionError(f"{source}: a basic-block ResNet (resnet18/34, no 'layer*.conv3' weights); the "
                              "detectron2 configs in detection/configs need a bottleneck ResNet (resnet50/101/152)")


def convert_file(in_path: str, out_path: str, verbose: bool = True, trust: bool = False) -> int:
    """Convert checkpoint ``in_path`` into detectron2 pickle ``out_path``; return the number of tensors written.

    With ``verbose``, prints ``old -> new`` for each key, as MoCo's converter does. Raises ConversionError
    (nothing is written) when the input holds no ResNet encoder, the output folder does not exist, or OUT is an
    existing folder or the input itself (also through a link).
    """
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise ConversionError(f"{out_path}: output folder {out_dir} does not exist")
    try:
        check_output_file(out_path, "OUT", {"IN": in_path})
    except UsageError as err:
        raise ConversionError(str(err)) from None
    encoder = extract_encoder(load_checkpoint(in_path, trust), source=in_path)
    check_bottleneck(encoder, in_path)
    model = convert_state_dict(encoder)
    write_pickle_atomic(build_payload(model), out_path)
    if verbose:
        for old in encoder:
            print(old, "->", rename_key(old))
    return len(model)
