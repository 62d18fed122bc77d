"""PASCAL VOC 2007 classification: the dataset (read from VOCdevkit/VOC2007 with xml.etree) and its metrics.

Ground truth per image and class follows the VOC devkit: 1 = the class is present (at least one object that is not
marked difficult), 0 = present only as difficult objects (ignored for that class), -1 = absent.

Metrics:
- `average_precision`: AP of one class over the images, difficult ones ignored; the area under the precision-recall
  curve evaluated at every distinct score, sum_n (R_n - R_{n-1}) P_n (equal to sklearn's average_precision_score on
  the images that are not ignored). The mean over classes is the reported VOC07 mAP.
- `voc07_11point_ap`: the VOC2007 devkit's 11-point interpolated AP, printed beside it.
- `per_image_ap`: the 2021 VOC_CLF metric (AP over the 20 classes of each image, averaged over images), for parity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from xml.etree import ElementTree as ET

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ops.errors import UsageError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def voc2007_root(data: str) -> str:
    """The VOC2007 folder for --data: <data>/VOCdevkit/VOC2007 (as in 2021), <data>/VOC2007 or <data> itself."""
    if not os.path.isdir(data):
        raise UsageError(f"--data {data!r} does not exist; give the folder holding VOCdevkit/VOC2007")
    for candidate in (os.path.join(data, "VOCdevkit", "VOC2007"), os.path.join(data, "VOC2007"), data):
        if os.path.isdir(os.path.join(candidate, "Annotations")):
            return candidate
    expected = os.path.join(data, "VOCdevkit", "VOC2007")
    if not os.path.isdir(expected):
        raise UsageError(f"--data {data!r}: missing folder {expected} (extract VOCtrainval_06-Nov-2007.tar and "
                         f"VOCtest_06-Nov-2007.tar there)")
    raise UsageError(f"--data {data!r}: missing folder {os.path.join(expected, 'Annotations')}")


def check_voc_layout(data: str, splits: tuple[str, ...] = ("trainval", "test")) -> str:
    """Return the VOC2007 folder if Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt exist, else raise."""
    root = voc2007_root(data)
    for sub in ("Annotations", "JPEGImages"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise UsageError(f"--data {data!r}: missing folder {os.path.join(root, sub)}")
    for split in splits:
        path = split_file(root, split)
        if not os.path.isfile(path):
            hint = " (the test split comes with VOCtest_06-Nov-2007.tar)" if split == "test" else ""
            raise UsageError(f"--data {data!r}: missing file {path}{hint}")
    return root


def split_file(root: str, split: str) -> str:
    return os.path.join(root, "ImageSets", "Main", f"{split}.txt")


def read_split(root: str, split: str) -> list[str]:
    """Image ids listed in ImageSets/Main/<split>.txt."""
    with open(split_file(root, split)) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise UsageError(f"{split_file(root, split)} lists no images")
    return ids


def parse_annotation(path: str) -> np.ndarray:
    """20 labels of one Annotations/<id>.xml: 1 present, 0 difficult only, -1 absent."""
    if not os.path.isfile(path):
        raise UsageError(f"missing annotation file {path}")
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise UsageError(f"{path}: not valid XML ({err})") from None
    labels = np.full(len(VOC_CLASSES), -1, dtype=np.int8)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_INDEX:
            raise UsageError(f"{path}: unknown VOC class {name!r}")
        difficult = int((obj.findtext("difficult") or "0").strip() or 0)
        c = CLASS_INDEX[name]
        labels[c] = max(labels[c], 0 if difficult else 1)
    return labels


class VOC2007Classification(Dataset):
    """(image, 20 labels in {1, 0, -1}) for the ids of one split of VOCdevkit/VOC2007."""

    classes = VOC_CLASSES

    def __init__(self, data: str, split: str, transform: Callable | None = None) -> None:
        self.root = check_voc_layout(data, (split,))
        self.ids = read_split(self.root, split)
        self.images = [os.path.join(self.root, "JPEGImages", f"{i}.jpg") for i in self.ids]
        missing = next((p for p in self.images if not os.path.isfile(p)), None)
        if missing:
            raise UsageError(f"missing image file {missing} (listed in {split_file(self.root, split)})")
        self.labels = np.stack([parse_annotation(os.path.join(self.root, "Annotations", f"{i}.xml"))
                                for i in self.ids])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        with Image.open(self.images[i]) as img:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.from_numpy(self.labels[i].astype(np.int64))


def _pr_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(precision, recall) at every distinct score, highest first; images labelled 0 are ignored."""
    keep = labels != 0
    s, y = np.asarray(scores, dtype=np.float64)[keep], labels[keep] > 0
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last image of each group of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return tp / (tp + fp), tp / positives


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct scores; labels 1 / -1 / 0 (ignored). NaN without positives."""
    pr = _pr_points(scores, np.asarray(labels))
    if pr is None:
        return float("nan")
    precision, recall = pr
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def voc07_11point_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC2007 devkit AP: mean over r in {0, 0.1, ..., 1} of the best precision at recall >= r."""
    pr = _pr_points(scores, np.asarray(labels))
    if pr is None:
        return float("nan")
    precision, recall = pr
    return float(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                          for r in np.linspace(0, 1, 11)]))


def per_class_ap(scores: np.ndarray, labels: np.ndarray, metric: Callable = average_precision) -> np.ndarray:
    """AP of every class (column) over the images (rows); NaN for a class without positives."""
    return np.array([metric(scores[:, c], labels[:, c]) for c in range(labels.shape[1])])


def mean_ap(aps: np.ndarray) -> float:
    """Mean over the classes that have positives."""
    valid = aps[~np.isnan(aps)]
    return float(valid.mean()) if valid.size else float("nan")


def per_image_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """The 2021 metric: AP over the 20 classes of each image (positives: label 1; difficult counts as negative),
    averaged over the images that have a positive."""
    binary = np.where(np.asarray(labels) == 1, 1, -1)
    values = [average_precision(scores[i], binary[i]) for i in range(len(binary)) if (binary[i] == 1).any()]
    return float(np.mean(values)) if values else float("nan")
