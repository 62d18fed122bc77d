"""The MoCo v2 / CLSA view pipeline on uint8 arrays: the same ops, parameters and order as the torchvision one.

A view is a list of steps, each `step(x) -> x`; the image stays a uint8 H x W x 3 array from the crop to the last
step, which writes the normalised float32 C x H x W tensor:

    ResizedCrop(size, scale) -> ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8) -> Grayscale(p=0.2)
    -> Blur(sigma ~ U[0.1, 2.0], p=0.5) -> HorizontalFlip(p=0.5) [-> RandAugment(n, 10)] -> ToNormalizedTensor

Every random draw has the distribution of its torchvision / 2021 counterpart (python `random` instead of torch's
generator; RandAugment unchanged), and every pixel op returns what the PIL op returns (`data_processing.fast_ops`),
so for the same draws the output tensor is bit-identical to the PIL pipeline's (tests/test_fast_views*.py).
Faster because colour jitter, grayscale, blur and normalisation run as compiled loops on arrays (numba) instead of
PIL mode conversions (the hue step was an RGB -> HSV -> RGB round trip), the flip is folded into the final write,
and there are no per-step torch RNG calls. The crop and resize are PIL's, as before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from data_processing import fast_ops
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD


def crop_box(width: int, height: int, scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, h, w), 10 tries, then a centre crop."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * random.uniform(scale[0], scale[1])
        aspect = math.exp(random.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ResizedCrop:
    """RandomResizedCrop(size, scale, ratio=(3/4, 4/3)), bilinear: PIL image -> uint8 array."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = (size, size), tuple(scale), tuple(ratio)

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            img = img.convert("RGB")
        top, left, h, w = crop_box(img.width, img.height, self.scale, self.ratio)
        # crop, then resize (PIL's resize(box=...) would also weigh pixels just outside the box)
        return np.asarray(img.crop((left, top, left + w, top + h)).resize(self.size, Image.Resampling.BILINEAR))

    def __repr__(self) -> str:
        return f"ResizedCrop(size={self.size}, scale={self.scale})"


class ColorJitter:
    """RandomApply([ColorJitter(b, c, s, h)], p): the four adjustments in a random order, factors uniform in
    [1 - b, 1 + b] (and likewise), hue shift uniform in [-h, h]."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 p: float = 0.8) -> None:
        self.ranges = [(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)] + [(-hue, hue)]
        self.p = p

    def draw(self) -> tuple[list[int], list[float]] | None:
        """None (not applied) or (order of ops 0..3 = brightness, contrast, saturation, hue; their factors)."""
        if random.random() >= self.p:
            return None
        order = random.sample(range(4), 4)
        return order, [random.uniform(lo, hi) for lo, hi in self.ranges]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        drawn = self.draw()
        if drawn is None:
            return x
        order, factors = drawn
        for i in order:
            x = (fast_ops.brightness, fast_ops.contrast, fast_ops.saturation, fast_ops.hue)[i](x, factors[i])
        return x

    def __repr__(self) -> str:
        return f"ColorJitter(ranges={self.ranges}, p={self.p})"


class Grayscale:
    """RandomGrayscale(p): luma replicated to 3 channels."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return fast_ops.grayscale(x) if random.random() < self.p else x

    def __repr__(self) -> str:
        return f"Grayscale(p={self.p})"


class Blur:
    """RandomApply([GaussianBlur(sigma ~ U[lo, hi])], p): PIL's Gaussian blur (three extended box passes)."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5) -> None:
        self.sigma, self.p = tuple(sigma), p

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if random.random() >= self.p:
            return x
        return fast_ops.gaussian_blur(x, random.uniform(*self.sigma))

    def __repr__(self) -> str:
        return f"Blur(sigma={self.sigma}, p={self.p})"


class HorizontalFlip:
    """RandomHorizontalFlip(p): returns a mirrored view (negative stride); the next copy or the final write
    materialises it."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x[:, ::-1] if random.random() < self.p else x

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class ToNormalizedTensor:
    """ToTensor + Normalize(mean, std), bit-identical, from a uint8 array (a mirrored view is written mirrored)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.lut = fast_ops.normalization_lut(self.mean, self.std)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        flip = x.ndim == 3 and x.strides[1] < 0
        return fast_ops.to_normalized_tensor(x[:, ::-1] if flip else x, self.lut, flip)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


class View:
    """A Compose-like list of steps (`.transforms`, first the crop) applied in order."""

    def __init__(self, transforms: list[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, img: Image.Image) -> torch.Tensor:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        return "View(" + ", ".join(map(repr, self.transforms)) + ")"


def weak_view(size: int, scale: Sequence[float]) -> View:
    """MoCo v2 augmentation at `size` px with RandomResizedCrop `scale`."""
    return View([ResizedCrop(size, scale), ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), Grayscale(0.2),
                 Blur((0.1, 2.0), p=0.5), HorizontalFlip(0.5), ToNormalizedTensor()])


def strong_view(size: int, scale: Sequence[float], aug_times: int) -> View:
    """The weak pipeline with RandAugment(aug_times, 10) inserted after the flip."""
    from data_processing.randaugment import RandAugment
    view = weak_view(size, scale)
    view.transforms.insert(-1, RandAugment(aug_times, 10))
    return view
