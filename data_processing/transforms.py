"""Views of one image: the key view, the picked weak views and the picked strong views (in that order).

Weak = MoCo v2 "aug+" (random resized crop, colour jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5, flip);
strong = the same with independent draws, plus RandAugment(aug_times, 10) after the flip.

Two implementations of the same views: backend "fast" (default; `data_processing.fast_views`, uint8 arrays and
compiled pixel loops, bit-identical ops, docs/performance.md) and "torchvision" (the plain torchvision/PIL Compose
below).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from data_processing import fast_ops, fast_views
from data_processing.fast_views import IMAGENET_MEAN, IMAGENET_STD
from data_processing.randaugment import RandAugment


class GaussianBlur:
    """PIL Gaussian blur with radius sigma ~ U[sigma_min, sigma_max] (MoCo v2)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def weak_view(size: int, scale: tuple[float, float]) -> T.Compose:
    """MoCo v2 augmentation at `size` px with RandomResizedCrop `scale` (torchvision/PIL backend)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        normalize(),
    ])


def strong_view(size: int, scale: tuple[float, float], aug_times: int) -> T.Compose:
    """The weak pipeline with RandAugment(aug_times, 10) inserted after the flip."""
    steps = list(weak_view(size, scale).transforms)
    steps.insert(-1, RandAugment(aug_times, 10))
    return T.Compose(steps)


BACKENDS = {"fast": (fast_views.weak_view, fast_views.strong_view), "torchvision": (weak_view, strong_view)}


@dataclass(frozen=True)
class CropSetting:
    size: int
    scale: tuple[float, float]


def expand_crops(nmb_crops: Sequence[int], size_crops: Sequence[int], min_scale_crops: Sequence[float],
                 max_scale_crops: Sequence[float]) -> list[CropSetting]:
    """The flattened crop list: setting i repeated nmb_crops[i] times, in order."""
    out = []
    for count, size, lo, hi in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops, strict=True):
        out += [CropSetting(size, (lo, hi))] * count
    return out


class MultiViewTransform:
    """image -> [key, weak_{a} for a in pick_weak, strong_{b} for b in pick_strong].

    Only picked views are produced. The key view uses the first crop setting. Picks are sorted and de-duplicated
    (the 2021 code treated them as a set). `backend`: "fast" (default) or "torchvision", same views either way.
    """

    def __init__(self, crops: Sequence[CropSetting], pick_weak: Sequence[int], pick_strong: Sequence[int],
                 aug_times: int, backend: str = "fast") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        weak_view_, strong_view_ = BACKENDS[backend]
        self.backend = backend
        self.crops = list(crops)
        self.pick_weak = sorted(set(pick_weak))
        self.pick_strong = sorted(set(pick_strong))
        self.key = weak_view_(self.crops[0].size, self.crops[0].scale)
        self.weak = [weak_view_(self.crops[i].size, self.crops[i].scale) for i in self.pick_weak]
        self.strong = [strong_view_(self.crops[i].size, self.crops[i].scale, aug_times) for i in self.pick_strong]
        if backend == "fast":
            fast_ops.warmup()  # compile once here; forked loader workers inherit the kernels

    @property
    def num_weak(self) -> int:
        return len(self.weak)

    @property
    def num_strong(self) -> int:
        return len(self.strong)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [self.key(img), *(t(img) for t in self.weak), *(t(img) for t in self.strong)]

    def sizes(self) -> list[int]:
        """Output size of every view, in order."""
        return [self.crops[0].size] + [self.crops[i].size for i in self.pick_weak + self.pick_strong]
