"""Load a pretrained query encoder into a plain torchvision backbone (linear evaluation, kNN, VOC07 transfer).

Accepted files (all read on the CPU):
- a `main_clsa.py` checkpoint, or one of the 2021 CLSA / MoCo releases: `state_dict` with `module.encoder_q.*`
  keys. The query encoder f_q is kept, its projection head `encoder_q.fc*` and everything else (key encoder,
  queue) dropped; the backbone must then miss exactly {fc.weight, fc.bias} (the 2021 lincls.py assertion);
- a linear-evaluation checkpoint written by `lincls.py` (`module.conv1.weight` ... `module.fc.weight`);
- a plain torchvision state_dict, with or without a `state_dict` wrapper or a `module.` prefix, also a backbone
  written by export_backbone.py (.pth or .safetensors).

Files are read safely (weights only, see clsa/checkpoint.py). Anything else is refused with a FileProblem naming
the file and what is wrong (one line, exit code 2 in the entry scripts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from clsa.checkpoint import backbone_state, load_file
from ops.errors import FileProblem

FC_KEYS = frozenset({"fc.weight", "fc.bias"})


@dataclass
class LoadReport:
    """What `load_encoder_weights` found and loaded."""
    path: str
    source: str  # "pretraining" (encoder_q of CLSA / MoCo), "linear" (lincls.py) or "torchvision"
    loaded: int  # number of tensors copied into the model
    fc_loaded: bool
    missing: list[str] = field(default_factory=list)
    epoch: int | None = None
    arch: str | None = None

    def describe(self) -> str:
        what = {"pretraining": "query encoder of a pretraining checkpoint", "linear": "linear-evaluation checkpoint",
                "torchvision": "torchvision state_dict"}[self.source]
        extra = f", epoch {self.epoch}" if self.epoch is not None else ""
        head = "with" if self.fc_loaded else "without"
        return f"{what}{extra}, {self.loaded} tensors loaded {head} fc"


def read_state_dict(path: str, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the whole checkpoint dict or {}) of `path`, read safely (clsa.checkpoint.load_file)."""
    obj = load_file(path, trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj
    elif isinstance(obj, dict):
        state, meta = obj, {}
    else:
        raise FileProblem(path, f"holds a {type(obj).__name__}, not a state_dict")
    state = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not state:
        raise FileProblem(path, "holds no tensors; expected a CLSA/MoCo checkpoint or a state_dict")
    return state, meta


def encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Backbone keys (torchvision names) and the source kind of a checkpoint's state dict (prefix rules:
    clsa.checkpoint.backbone_state); the projection head `encoder_q.fc*` of a pretraining checkpoint is dropped."""
    weights, pretraining = backbone_state(state)
    if pretraining:
        return {k: v for k, v in weights.items() if not k.startswith("fc")}, "pretraining"
    return weights, "linear_or_torchvision"


def load_encoder_weights(model: nn.Module, path: str, keep_fc: bool = False, trust: bool = False) -> LoadReport:
    """Copy the encoder weights of `path` into the torchvision backbone `model` (non-strict, checked).

    keep_fc: also load `fc.*` when the file has a classifier whose shape matches (a lincls.py checkpoint);
    a pretraining checkpoint never provides fc. Without keep_fc the missing keys must be exactly {fc.weight,
    fc.bias}; with it they must be empty. Everything else in the model must be covered, and no backbone key of the
    file may be left over, else a FileProblem names the file and the first offending keys.
    """
    state, meta = read_state_dict(path, trust)
    weights, source = encoder_state(state)
    if source != "pretraining":
        source = "linear" if "best_acc1" in meta else "torchvision"
    if not keep_fc or source == "pretraining":
        weights = {k: v for k, v in weights.items() if k not in FC_KEYS}
    model_keys = set(model.state_dict())
    if not weights or not (set(weights) & (model_keys - FC_KEYS)):
        sample = ", ".join(sorted(state)[:3])
        raise FileProblem(path, "holds no encoder weights (expected 'module.encoder_q.*' keys of a CLSA/MoCo "
                          f"checkpoint or a torchvision state_dict; found {sample}, ...)")
    model_state = model.state_dict()
    wrong = [k for k, v in weights.items() if k in model_state and model_state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise FileProblem(path, f"does not fit the model (its architecture or number of classes): {k} has shape "
                          f"{tuple(weights[k].shape)} in the file, {tuple(model_state[k].shape)} in the model")
    result = model.load_state_dict(weights, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    expected_missing = set() if "fc.weight" in weights else set(FC_KEYS)
    if missing != expected_missing or unexpected:
        bad = sorted(missing - expected_missing) or sorted(unexpected)
        raise FileProblem(path, f"does not match the backbone: {len(missing - expected_missing)} missing and "
                          f"{len(unexpected)} unexpected keys (e.g. {', '.join(bad[:3])})")
    epoch = meta.get("epoch")
    return LoadReport(path=path, source=source, loaded=len(weights), fc_loaded="fc.weight" in weights,
                      missing=sorted(missing), epoch=int(epoch) if isinstance(epoch, int) else None,
                      arch=meta.get("arch"))
