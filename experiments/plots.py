"""Figures of a pretraining run: loss curves and kNN accuracy from its TensorBoard events, and a grid of views.

The event files are read directly (TFRecord framing + tensorboardX's Event protobuf), so `tensorboard` need not be
installed.
"""

from __future__ import annotations

import glob
import os
import struct
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tensorboardX.proto.event_pb2 import Event  # noqa: E402

from data_processing.transforms import MultiViewTransform  # noqa: E402
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every `events.out.tfevents*` file in `run_dir`, sorted by step; for a step
    logged twice (a resumed run) the last value wins."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]
            pos += 12 + length + 4
            if len(record) < length:
                break  # a record still being written
            event = Event.FromString(record)
            for value in event.summary.value:
                series[value.tag][int(event.step)] = float(value.simple_value)
    return {tag: sorted(points.items()) for tag, points in series.items()}


def plot_curves(scalars: dict[str, list[tuple[int, float]]], path: str, title: str = "CLSA pretraining",
                random_knn: float | None = None) -> str:
    """PNG with the InfoNCE and DDM losses by iteration (left) and kNN top-1 by epoch (right)."""
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 3.8))
    for tag, label, color in (("train/infonce", "InfoNCE (weak vs keys + queue)", "tab:blue"),
                              ("train/ddm", "DDM (strong || weak)", "tab:orange")):
        if scalars.get(tag):
            steps, values = zip(*scalars[tag], strict=True)
            ax_loss.plot(steps, values, label=label, color=color)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training losses")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    knn = scalars.get("knn/top1", [])
    if knn:
        epochs, acc = zip(*knn, strict=True)
        ax_knn.plot([e + 1 for e in epochs], acc, "o-", color="tab:green", label="CLSA encoder")
        ax_knn.set_xticks([e + 1 for e in epochs])
    if random_knn is not None:
        ax_knn.axhline(random_knn, ls="--", color="gray", label="random init")
    ax_knn.set_xlabel("epoch")
    ax_knn.set_ylabel("kNN top-1 (%)")
    ax_knn.set_title("kNN monitor")
    ax_knn.legend()
    ax_knn.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def to_display(view: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of a 3 x H x W view: H x W x 3 floats in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (view * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_views(images: list, transform: MultiViewTransform, path: str, names: list[str] | None = None,
               repeats: int = 2) -> str:
    """PNG grid: one row per image: the original, then `repeats` draws of [key, weak..., strong...] views."""
    columns = ["original"]
    n_weak, n_strong = transform.plan.num_weak, transform.plan.num_strong
    kinds = ["key"] + [f"weak {s}px" for s in transform.plan.sizes()[1:1 + n_weak]] + \
        [f"strong {s}px" for s in transform.plan.sizes()[1 + n_weak:1 + n_weak + n_strong]]
    columns += [k for _ in range(repeats) for k in kinds]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.25 * len(columns), 1.35 * len(images)),
                             squeeze=False)
    for r, img in enumerate(images):
        cells = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0]
        for _ in range(repeats):
            cells += [to_display(v) for v in transform(img)]
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0 and names:
                ax.set_ylabel(names[r], fontsize=8)
    fig.suptitle("key / weak (MoCo v2 aug+) / strong (aug+ and RandAugment) views of real Fashion-MNIST images",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
