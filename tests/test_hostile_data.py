"""Data that lies or attacks: link loops and empty class folders are refused at start with one line; the dataset
never follows a loop."""

from __future__ import annotations

import os

import pytest
from conftest import CPU_OVERRIDES, TINY_CROPS, write_image_folder
from torchvision.datasets import ImageFolder as TorchvisionImageFolder

import lincls
import main_clsa
from data_processing.datasets import build_dataset
from ops.folders import FolderLoop


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the run started: the bad input was not refused")
    for module in (main_clsa, lincls):
        monkeypatch.setattr(module, "launch", fail)


def _refused(capsys, main, argv: list[str], prog: str, *expected: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:") and all(x in err[0] for x in expected), err


@pytest.fixture
def looped(tmp_path) -> str:
    """A class folder with a link to itself: os.walk(followlinks=True) reads its images ~40 times."""
    root = write_image_folder(str(tmp_path / "loop"), classes=2, per_class=4)
    os.symlink(".", os.path.join(root, "train", "class1", "again"))
    return root


@pytest.mark.parametrize("target", [".", ".."])
def test_a_link_loop_is_refused_at_start(target, looped, capsys, no_launch):
    link = os.path.join(looped, "train", "class1", "again")
    os.remove(link)
    os.symlink(target, link)
    _refused(capsys, main_clsa.main, ["--data", looped, *CPU_OVERRIDES, *TINY_CROPS], "main_clsa.py",
             f"--data: the link {link} -> ", "remove the link")


def test_the_dataset_never_follows_a_loop(looped):
    with pytest.raises(FolderLoop, match="again"):
        build_dataset("ImageNet", looped, "train", None)


def test_same_samples_as_torchvision_without_loops(tmp_path):
    root = write_image_folder(str(tmp_path / "ok"), classes=3, per_class=3)
    extra = write_image_folder(str(tmp_path / "extra"), classes=1, per_class=2)
    os.makedirs(os.path.join(root, "train", "class0", "sub"))
    os.rename(os.path.join(root, "train", "class0", "2.jpg"), os.path.join(root, "train", "class0", "sub", "B.JPG"))
    os.symlink(os.path.join(extra, "train", "class0"), os.path.join(root, "train", "class2", "linked"))
    ours, theirs = build_dataset("ImageNet", root, "train", None), TorchvisionImageFolder(os.path.join(root, "train"))
    assert len(ours.samples) == 11 and ours.samples == theirs.samples and ours.classes == theirs.classes


def test_an_empty_class_folder_is_refused_at_start(image_folder, tmp_path, capsys, no_launch):
    root = write_image_folder(str(tmp_path / "d"), classes=2, per_class=4)
    empty = os.path.join(root, "train", "class2")
    os.makedirs(empty)
    open(os.path.join(empty, "notes.txt"), "w").close()
    _refused(capsys, main_clsa.main, ["--data", root, *CPU_OVERRIDES, *TINY_CROPS], "main_clsa.py",
             f"--data: class folder {empty} holds no images")
    write_image_folder(root, classes=2, per_class=2, split="val")
    _refused(capsys, lincls.main, ["--data", root], "lincls.py", f"class folder {empty} holds no images")
