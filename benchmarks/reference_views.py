"""The 2021 view pipeline, reproduced plainly for speed comparisons (clsa-reference.md §1 and §4).

Every crop setting produces BOTH a weak and a strong view, whatever --pick_weak/--pick_strong say (the 2021 code
generated them all and the loop dropped the unpicked ones): 5 views per image in the single-crop setting, 11 in the
multi-crop one. Each view is a torchvision Compose on PIL images, in the 2021 order:

    RandomResizedCrop -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8) -> RandomGrayscale(0.2)
    -> RandomApply(GaussianBlur(sigma ~ U[0.1, 2.0]), p=0.5) -> RandomHorizontalFlip
    [-> RandAugment(aug_times, 10), strong views only] -> ToTensor -> Normalize

RandAugment is FixMatch's 14-op pool (python `random.choices` with replacement, numpy magnitude 1..m-1, each op
applied with probability 0.5). This module is frozen on purpose: it does not import data_processing, so speeding up
the project's pipeline can never change the baseline it is compared with.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class GaussianBlur:
    """MoCo v2's blur: PIL GaussianBlur with radius ~ U[0.1, 2.0]."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, x: Image.Image) -> Image.Image:
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.sigma[0], self.sigma[1])))


def _sign(x: float) -> float:
    return -x if random.random() < 0.5 else x


def _f(v: int, max_v: float, bias: float = 0.0) -> float:
    return float(v) * max_v / 10 + bias


def _i(v: int, max_v: float, bias: int = 0) -> int:
    return int(v * max_v / 10) + bias


_AFFINE = Image.Transform.AFFINE
FIXMATCH_OPS = (
    lambda img, v: ImageOps.autocontrast(img),
    lambda img, v: ImageEnhance.Brightness(img).enhance(_f(v, 0.9, 0.05)),
    lambda img, v: ImageEnhance.Color(img).enhance(_f(v, 0.9, 0.05)),
    lambda img, v: ImageEnhance.Contrast(img).enhance(_f(v, 0.9, 0.05)),
    lambda img, v: ImageOps.equalize(img),
    lambda img, v: img,
    lambda img, v: ImageOps.posterize(img, _i(v, 4, 4)),
    lambda img, v: img.rotate(_sign(_i(v, 30))),
    lambda img, v: ImageEnhance.Sharpness(img).enhance(_f(v, 0.9, 0.05)),
    lambda img, v: img.transform(img.size, _AFFINE, (1, _sign(_f(v, 0.3)), 0, 0, 1, 0)),
    lambda img, v: img.transform(img.size, _AFFINE, (1, 0, 0, _sign(_f(v, 0.3)), 1, 0)),
    lambda img, v: ImageOps.solarize(img, 256 - _i(v, 256)),
    lambda img, v: img.transform(img.size, _AFFINE, (1, 0, _sign(int(_f(v, 0.3) * img.size[0])), 0, 1, 0)),
    lambda img, v: img.transform(img.size, _AFFINE, (1, 0, 0, 0, 1, _sign(int(_f(v, 0.3) * img.size[1])))),
)


class RandAugment:
    """FixMatch-pool RandAugment as the 2021 code used it."""

    def __init__(self, n: int, m: int = 10) -> None:
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in random.choices(FIXMATCH_OPS, k=self.n):
            v = np.random.randint(1, self.m)
            if random.random() < 0.5:
                img = op(img, v)
        return img


def _weak_steps(crop: T.RandomResizedCrop) -> list:
    return [crop,
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
            T.RandomHorizontalFlip()]


def _tail() -> list:
    return [T.ToTensor(), T.Normalize(MEAN, STD)]


class ReferenceMultiCrop:
    """image -> [key, weak_0..weak_{n-1}, strong_0..strong_{n-1}] for ALL n crops (the 2021 Multi_FixTransform).

    The key view is RandomResizedCrop(init_size, (0.2, 1.0)); crop i's weak and strong views share one
    RandomResizedCrop object (independent draws per call).
    """

    def __init__(self, size_crops: Sequence[int], nmb_crops: Sequence[int], min_scale_crops: Sequence[float],
                 max_scale_crops: Sequence[float], aug_times: int = 5, init_size: int = 224) -> None:
        self.trans = [T.Compose(_weak_steps(T.RandomResizedCrop(init_size, scale=(0.2, 1.0))) + _tail())]
        weak, strong = [], []
        for size, count, lo, hi in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops, strict=True):
            crop = T.RandomResizedCrop(size, scale=(lo, hi))
            weak += [T.Compose(_weak_steps(crop) + _tail())] * count
            strong += [T.Compose(_weak_steps(crop) + [RandAugment(aug_times, 10)] + _tail())] * count
        self.trans += weak + strong

    def __call__(self, x: Image.Image) -> list[torch.Tensor]:
        return [t(x) for t in self.trans]


def pick(views: list[torch.Tensor], pick_weak: Sequence[int], pick_strong: Sequence[int]) -> list[torch.Tensor]:
    """What the 2021 training loop kept: key, the picked weak views, the picked strong views."""
    n = (len(views) - 1) // 2
    weak, strong = views[1:1 + n], views[1 + n:]
    return [views[0]] + [weak[i] for i in sorted(set(pick_weak))] + [strong[i] for i in sorted(set(pick_strong))]
