"""Data that lies or attacks: link loops and empty class folders are refused at start with one line (the dataset
never follows a loop); a decompression bomb is skipped and reported like any unreadable image, in both view paths,
and stops a --strict_data run with one line."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
import torch
from conftest import CPU_OVERRIDES, TINY_CROPS, run_script, write_image_folder
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder as TorchvisionImageFolder

import lincls
import main_clsa
from data_processing.datasets import build_dataset
from data_processing.device_views import DeviceViews, EncodedImages, collate_encoded, read_file_bytes
from data_processing.gpu_views import BatchViews
from data_processing.sampling import RobustViews, UnreadableImage
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import ViewPlan, expand_crops
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


def write_png_bomb(path: str, width: int = 20000, height: int = 20000) -> str:
    """A 100-byte PNG whose header claims width x height RGB pixels (1.2 GB decoded at 20000 x 20000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bombed(tmp_path) -> tuple[str, str]:
    root = write_image_folder(str(tmp_path / "bomb"), classes=2, per_class=3)
    return root, write_png_bomb(os.path.join(root, "train", "class0", "1_bomb.png"))


def _one_batch(dataset, **kwargs):
    """The whole dataset as one batch, read by a real DataLoader worker process."""
    keys = [(0, i) for i in range(len(dataset))]
    return next(iter(DataLoader(dataset, batch_size=len(keys), sampler=keys, num_workers=1, **kwargs)))


def test_a_decompression_bomb_is_skipped_and_reported_with_views_cpu(bombed):
    root, bomb = bombed
    crops = expand_crops([1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429])
    images = build_dataset("ImageNet", root, "train", MultiViewTransform(ViewPlan.build(crops, [0], [1], 2)))
    views, _, skipped = _one_batch(RobustViews(images, seed=0))
    assert [s for s in skipped if s] == [bomb] and views[0].shape == (7, 3, 32, 32)
    with pytest.raises(UnreadableImage) as e:
        _one_batch(RobustViews(images, seed=0, strict=True))
    assert e.value.line().startswith(f"unreadable image {bomb}: Image size (400000000 pixels) exceeds")


def test_a_decompression_bomb_is_skipped_in_the_worker_with_views_gpu(bombed):
    root, bomb = bombed
    images = EncodedImages(build_dataset("ImageNet", root, "train", None, loader=read_file_bytes))
    batch, _, skipped = _one_batch(RobustViews(images, seed=0), collate_fn=collate_encoded)
    assert [s for s in skipped if s] == [bomb] and bomb not in batch[1]  # never reaches a decoder
    crops = expand_crops([1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429])
    views, bad = DeviceViews(BatchViews(ViewPlan.build(crops, [0], [1], 2)), torch.device("cpu"), 0, 0)(batch, 0, 0)
    assert bad == [] and views[0].shape == (7, 3, 32, 32)
    with pytest.raises(UnreadableImage, match="unreadable image .*1_bomb.png"):
        _one_batch(RobustViews(images, seed=0, strict=True), collate_fn=collate_encoded)


def test_strict_data_stops_at_a_bomb_with_one_line(bombed, tmp_path):
    root, bomb = bombed
    # one batch of all 7 images, so the bomb is read whatever the (unseeded) order
    r = run_script(["main_clsa.py", "--data", root, *CPU_OVERRIDES, *TINY_CROPS, "--batch_size", "7",
                    "--moco_k", "14", "--strict_data", "--run_dir", str(tmp_path / "run")])
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stdout + r.stderr
    assert err[0].startswith(f"main_clsa.py: error: unreadable image {bomb}: ") and "--strict_data" in err[0]
