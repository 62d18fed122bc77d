#!/usr/bin/env python3
"""Export the query encoder's backbone of a pretraining checkpoint for other tools: torchvision names, no head.

    python3 export_backbone.py CHECKPOINT OUT.safetensors      # or OUT.pth (a plain torch.save state dict)

OUT holds f_q without its projection head (`encoder_q.fc*`), with torchvision's key names, so that
`torchvision.models.<arch>()` and `timm.create_model("<arch>")` load it with only `fc.weight` and `fc.bias`
missing. Beside it, OUT.json is a model card: arch, epochs, the pretraining flags and the source's sha256.
lincls.py, VOC_CLF/main.py and detection/convert-pretrain-to-detectron2.py accept OUT as --pretrained / IN.
The checkpoint is read weights-only (see clsa/checkpoint.py); exit code 2 with one line for a refused input, an
--arch that does not fit it, or an OUT (or OUT.json) that is an existing folder or CHECKPOINT itself.
"""

from __future__ import annotations

from ops.startup import imports_done, pause_collector

if __name__ == "__main__":  # before the slow imports
    pause_collector()

import argparse
import hashlib
import json
import os
import sys

import torch

from clsa.builder import backbone
from clsa.checkpoint import atomic_save
from clsa.pretrained import FC_KEYS, encoder_state, read_state_dict
from ops.argparser import RESNET_ARCHS, add_trust_flag, naming_flag
from ops.atomic import atomic_write
from ops.errors import UsageError, exit_usage
from ops.validate import check_output_file

if __name__ == "__main__":
    imports_done()  # see ops/startup.py

PROG = "export_backbone.py"
FORMATS = (".safetensors", ".pth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="main_clsa.py (or 2021 CLSA / MoCo) checkpoint")
    p.add_argument("out", metavar="OUT", help="file to write, ending in .safetensors or .pth")
    p.add_argument("-a", "--arch", default="", help="backbone when the checkpoint does not record it: "
                   + ", ".join(RESNET_ARCHS))
    add_trust_flag(p)
    return p


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_state(path: str, arch: str = "", trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(backbone state dict in torchvision names without fc, the checkpoint's metadata) of a pretraining checkpoint.

    The state dict is checked against torchvision's `arch`: it must cover every key but fc.weight and fc.bias.
    """
    with naming_flag("CHECKPOINT"):
        state, meta = read_state_dict(path, trust)
    weights, source = encoder_state(state)
    if source != "pretraining":
        raise UsageError(f"CHECKPOINT {path!r} holds no query encoder ('module.encoder_q.*' keys); expected a "
                         "main_clsa.py, 2021 CLSA or MoCo pretraining checkpoint")
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    recorded = meta.get("arch") or args.get("arch")
    arch = arch or recorded or ""
    if arch not in RESNET_ARCHS:
        raise UsageError(f"CHECKPOINT {path!r} does not name its arch ({arch!r}); pass --arch, one of: "
                         + ", ".join(RESNET_ARCHS))
    weights = {k: v.contiguous().clone() for k, v in weights.items() if k not in FC_KEYS}
    model = backbone(arch).state_dict()
    missing = sorted(set(model) - set(weights) - FC_KEYS)
    bad = missing or sorted(k for k, v in weights.items() if k not in model or model[k].shape != v.shape)
    if bad:
        said = f"; the file records arch {recorded!r}" if recorded and recorded != arch else ""
        raise UsageError(f"CHECKPOINT {path!r} does not match torchvision's {arch} ({len(bad)} "
                         f"{'missing' if missing else 'unexpected or differently shaped'} keys, e.g. "
                         f"{', '.join(bad[:3])}){said}; pass the right --arch")
    return weights, {**meta, "arch": arch}


def model_card(path: str, out: str, meta: dict, tensors: int) -> dict:
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    return {"arch": meta["arch"], "epochs": meta.get("epoch"), "pretraining_flags": args,
            "source": os.path.abspath(path), "source_sha256": sha256(path), "file": os.path.basename(out),
            "format": os.path.splitext(out)[1].lstrip("."), "tensors": tensors,
            "keys": "torchvision names; fc.weight and fc.bias (the classifier) are not included"}


def write_export(weights: dict[str, torch.Tensor], out: str, card: dict) -> None:
    if out.endswith(".safetensors"):
        from safetensors.torch import save
        meta = {"arch": card["arch"], "epochs": str(card["epochs"]), "source_sha256": card["source_sha256"]}
        atomic_write(out, lambda f: f.write(save(weights, metadata=meta)))
    else:
        atomic_save(weights, out)
    text = json.dumps(card, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(out + ".json", lambda f: f.write(text.encode()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.out.endswith(FORMATS):
            raise UsageError(f"OUT {args.out!r} must end in .safetensors or .pth")
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise UsageError(f"OUT {args.out!r}: the folder {folder} does not exist")
        for out in (args.out, args.out + ".json"):
            check_output_file(out, "OUT", {"CHECKPOINT": args.checkpoint})
        weights, meta = export_state(args.checkpoint, args.arch, args.trust_checkpoint)
    except UsageError as err:
        exit_usage(PROG, err)
    card = model_card(args.checkpoint, args.out, meta, len(weights))
    write_export(weights, args.out, card)
    print(f"wrote {len(weights)} tensors of the {card['arch']} query encoder (epoch {card['epochs']}) to {args.out} "
          f"and its model card to {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
