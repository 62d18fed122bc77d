"""Label subsets (data_processing/subsets.py): the class-balanced draw and list files, on ImageFolders and on
Fashion-MNIST IDX files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import write_image_folder
from fmnist_support import write_tiny_fmnist
from PIL import Image
from torchvision.datasets import ImageFolder

from data_processing.datasets import FashionMNIST
from data_processing.subsets import SubsetError, balanced_draw, label_subset, sample_names, select_listed


def test_balanced_draw_is_class_balanced_seeded_and_repeatable():
    sizes = [200, 37, 5, 1]
    targets = np.repeat(np.arange(4), sizes)
    np.random.default_rng(0).shuffle(targets)  # classes interleaved, as in a real split
    drawn = balanced_draw(targets, 4, 0.1, seed=3)
    counts = np.bincount(targets[drawn], minlength=4).tolist()
    assert counts == [20, 4, 1, 1]  # 0.1 x 37 = 3.7 -> 4, 0.5 -> 1 (half up), 0.1 -> at least 1
    assert drawn == sorted(set(drawn))
    assert balanced_draw(targets, 4, 0.1, seed=3) == drawn  # repeatable
    assert balanced_draw(targets, 4, 0.1, seed=4) != drawn  # the seed matters
    assert balanced_draw(targets, 4, 1.0, seed=9) == list(range(len(targets)))
    # each class's draw depends only on (seed, class, its members): class 0 keeps its images when class 1 shrinks
    fewer = targets.copy()
    fewer[np.flatnonzero(targets == 1)[5:]] = 3
    class0 = [i for i in drawn if targets[i] == 0]
    assert [i for i in balanced_draw(fewer, 4, 0.1, seed=3) if fewer[i] == 0] == class0
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(SubsetError, match=r"\(0, 1\]"):
            balanced_draw(targets, 4, bad, seed=0)


def test_list_selects_exactly_its_images(tmp_path):
    root = write_image_folder(str(tmp_path / "data"), classes=3, per_class=4, size=(16, 16))
    folder = ImageFolder(os.path.join(root, "train"))
    names = sample_names(folder)
    assert names[:2] == ["class0/0.jpg", "class0/1.jpg"]
    listed = ["class2/3.jpg", "class0/1.jpg", "class1/0.jpg", "class0/1.jpg"]  # a repeat counts once
    (tmp_path / "list.txt").write_text("# a comment\n" + "\n".join(listed) + "\n\n")
    subset = label_subset(folder, folder.classes, str(tmp_path / "list.txt"))
    assert [names[i] for i in subset.indices] == ["class0/1.jpg", "class1/0.jpg", "class2/3.jpg"]
    assert subset.per_class == [1, 1, 1] and subset.kind == "list" and subset.split_size == 12
    # the names it records select the same images again
    (tmp_path / "again.txt").write_text(subset.names_text())
    assert label_subset(folder, folder.classes, str(tmp_path / "again.txt")).indices == subset.indices

    with pytest.raises(SubsetError, match=r"2 of its 3 images are not in the split \(first: nope.jpg, class9/1.jpg"):
        select_listed(names, ["nope.jpg", "class1/2.jpg", "class9/1.jpg"])
    with pytest.raises(SubsetError, match="several class folders"):  # 0.jpg is in every class folder
        select_listed(names, ["0.jpg"])
    (tmp_path / "two.txt").write_text("class0/0.jpg\nclass1/0.jpg\n")
    with pytest.raises(SubsetError, match=r"1 of 3 classes have no image in the subset \(first: class2\)"):
        label_subset(folder, folder.classes, str(tmp_path / "two.txt"))


def test_bare_file_names_as_in_the_imagenet_lists(tmp_path):
    """ImageNet names are unique across classes (n01440764_10026.JPEG), so a bare name finds its class folder."""
    for wnid in ("n01440764", "n01443537"):
        os.makedirs(tmp_path / "train" / wnid)
        for k in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / wnid / f"{wnid}_{k}.JPEG")
    folder = ImageFolder(str(tmp_path / "train"))
    picked = select_listed(sample_names(folder), ["n01443537_2.JPEG", "n01440764_0.JPEG"])
    assert [folder.samples[i][0].rsplit(os.sep, 1)[-1] for i in picked] == ["n01440764_0.JPEG", "n01443537_2.JPEG"]


def test_fashion_mnist_subsets(tmp_path):
    """Fashion-MNIST samples are named by their train index; the draw is balanced over its labels."""
    data = FashionMNIST(write_tiny_fmnist(str(tmp_path / "fm"), n_train=200), "train")
    classes = list(data.classes)
    sub = label_subset(data, classes, fraction=0.1, seed=0)
    assert sub.per_class == [2] * 10 and len(sub.indices) == 20 and sub.kind == "fraction"
    assert sub.record()["seed"] == 0 and sub.record()["fraction"] == 0.1
    assert label_subset(data, classes, fraction=0.1, seed=0).names == sub.names
    (tmp_path / "idx.txt").write_text("\n".join(str(i) for i in range(10, 20)) + "\n")
    listed = label_subset(data, classes, str(tmp_path / "idx.txt"))
    assert listed.indices == list(range(10, 20)) and listed.per_class == [1] * 10
    with pytest.raises(SubsetError, match="not both"):
        label_subset(data, classes, str(tmp_path / "idx.txt"), fraction=0.5)
