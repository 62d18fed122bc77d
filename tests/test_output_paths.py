"""An output path never destroys the input: export_backbone.py, the detectron2 converter and upgrade_checkpoint.py
refuse an OUT that is the input (by name, through a symbolic or a hard link) or an existing folder, with one line."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch
from conftest import pretraining_shaped_checkpoint, run_script


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """A pretraining-shaped resnet18 checkpoint and a tiny dict that the converter takes for a bottleneck ResNet
    (it checks key names, not shapes)."""
    base = tmp_path_factory.mktemp("inputs")
    pretraining_shaped_checkpoint(str(base / "r18.pth.tar"))
    shutil.copy(base / "r18.pth.tar", base / "r18.pth.json")  # OUT r18.pth writes its model card to r18.pth.json
    names = ["conv1.weight", "bn1.weight"] + [f"layer{i}.0.conv{j}.weight" for i in range(1, 5) for j in (1, 3)]
    torch.save({k: torch.ones(1) for k in names}, base / "bottleneck.pth")
    return {"export": str(base / "r18.pth.tar"), "card": str(base / "r18.pth.json"),
            "converter": str(base / "bottleneck.pth")}


COMMANDS = {"export": (["export_backbone.py"], "OUT", "CHECKPOINT"),
            "converter": (["detection/convert-pretrain-to-detectron2.py"], "OUT", "IN"),
            "upgrade": (["upgrade_checkpoint.py", "--trust_checkpoint"], "OUT", "IN")}


def refused(argv: list[str], source: str, *words: str) -> None:
    """Run argv: exit code 2, one stderr line holding `words`, and `source` unchanged."""
    before = digest(source)
    proc = run_script(argv)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert digest(source) == before, f"{argv} changed its input"


def outputs(source: str, tmp_path, suffix: str) -> dict[str, str]:
    """OUT paths that name `source`: itself, a symbolic link and a hard link to it."""
    link, hard = str(tmp_path / f"link{suffix}"), str(tmp_path / f"hard{suffix}")
    os.symlink(source, link)
    os.link(source, hard)
    return {"same path": source, "symbolic link": link, "hard link": hard}


@pytest.mark.parametrize("tool", ["export", "converter", "upgrade"])
def test_out_equal_to_the_input_is_refused(inputs, tmp_path, tool):
    source = str(tmp_path / ("in.pth" if tool == "export" else "in.pth.tar"))
    with open(inputs["converter" if tool == "converter" else "export"], "rb") as f, open(source, "wb") as out:
        out.write(f.read())
    prefix, flag, in_flag = COMMANDS[tool]
    for how, out in outputs(source, tmp_path, ".pth").items():
        words = [f"{flag} {out!r}", f"same file as {in_flag}"] + (["through a link"] if how != "same path" else [])
        refused([prefix[0], source, out, *prefix[1:]], source, *words)


@pytest.mark.parametrize("tool", ["export", "converter", "upgrade"])
def test_out_that_is_a_folder_is_refused(inputs, tmp_path, tool):
    folder = tmp_path / "out.safetensors"  # a folder with a file's suffix passes export's suffix check
    folder.mkdir()
    source = inputs["converter" if tool == "converter" else "export"]
    prefix, flag, _ = COMMANDS[tool]
    refused([prefix[0], source, str(folder), *prefix[1:]], source, f"{flag} {str(folder)!r} is an existing folder")
    assert os.listdir(folder) == []


def test_export_model_card_never_replaces_the_checkpoint(inputs, tmp_path):
    card = inputs["card"]
    out = card[: -len(".json")]
    refused(["export_backbone.py", card, out], card, f"OUT {card!r}", f"same file as CHECKPOINT {card!r}")
    assert not os.path.exists(out)
