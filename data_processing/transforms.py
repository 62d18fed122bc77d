"""Views of one image: the key view, the picked weak views and the picked strong views (in that order).

Weak = MoCo v2 "aug+" (random resized crop, colour jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5, flip);
strong = the same with independent draws, plus RandAugment(aug_times, 10) after the flip.

Two implementations of the same views: backend "fast" (default; `data_processing.fast_views`, uint8 arrays and
compiled pixel loops, bit-identical ops, docs/performance.md) and "torchvision" (the plain torchvision/PIL Compose
below).
"""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from data_processing import fast_ops, fast_views
from data_processing.randaugment import RandAugment
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD, ViewPlan


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


class MultiViewTransform:
    """image -> [key, weak..., strong...] as `plan` (data_processing/view_plan.py) lays them out.

    `backend`: "fast" (default) or "torchvision", the same views either way.
    """

    def __init__(self, plan: ViewPlan, backend: str = "fast") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        weak_view_, strong_view_ = BACKENDS[backend]
        self.plan, self.backend = plan, backend
        key_crop, *rest = plan.view_crops()
        self.key = weak_view_(key_crop[0].size, key_crop[0].scale)
        self.weak = [weak_view_(c.size, c.scale) for c, strong in rest if not strong]
        self.strong = [strong_view_(c.size, c.scale, plan.aug_times) for c, strong in rest if strong]
        if backend == "fast":
            fast_ops.warmup()  # compile once here; forked loader workers inherit the kernels

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [self.key(img), *(t(img) for t in self.weak), *(t(img) for t in self.strong)]
