"""RandAugment with FixMatch's 14-op pool, as the 2021 CLSA code uses it.

n ops are drawn with replacement; for each, a magnitude v is drawn from 1..m-1 (numpy, even if the op is then
skipped) and the op is applied with probability 0.5. Ops marked signed flip their sign with probability 0.5.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

AFFINE = Image.Transform.AFFINE


def _float(v: int, max_v: float, bias: float = 0.0) -> float:
    return v * max_v / 10 + bias


def _int(v: int, max_v: float, bias: int = 0) -> int:
    return int(v * max_v / 10) + bias


def _sign() -> int:
    return -1 if random.random() < 0.5 else 1


def auto_contrast(img: Image.Image, v: int) -> Image.Image:
    return ImageOps.autocontrast(img)


def brightness(img: Image.Image, v: int) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(_float(v, 0.9, 0.05))


def color(img: Image.Image, v: int) -> Image.Image:
    return ImageEnhance.Color(img).enhance(_float(v, 0.9, 0.05))


def contrast(img: Image.Image, v: int) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(_float(v, 0.9, 0.05))


def equalize(img: Image.Image, v: int) -> Image.Image:
    return ImageOps.equalize(img)


def identity(img: Image.Image, v: int) -> Image.Image:
    return img


def posterize(img: Image.Image, v: int) -> Image.Image:
    return ImageOps.posterize(img, _int(v, 4, 4))


def rotate(img: Image.Image, v: int) -> Image.Image:
    return img.rotate(_sign() * _int(v, 30))


def sharpness(img: Image.Image, v: int) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(_float(v, 0.9, 0.05))


def shear_x(img: Image.Image, v: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, _sign() * _float(v, 0.3), 0, 0, 1, 0))


def shear_y(img: Image.Image, v: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, 0, _sign() * _float(v, 0.3), 1, 0))


def solarize(img: Image.Image, v: int) -> Image.Image:
    return ImageOps.solarize(img, 256 - _int(v, 256))


def translate_x(img: Image.Image, v: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, _sign() * int(_float(v, 0.3) * img.size[0]), 0, 1, 0))


def translate_y(img: Image.Image, v: int) -> Image.Image:
    return img.transform(img.size, AFFINE, (1, 0, 0, 0, 1, _sign() * int(_float(v, 0.3) * img.size[1])))


FIXMATCH_POOL: tuple[Callable[[Image.Image, int], Image.Image], ...] = (
    auto_contrast, brightness, color, contrast, equalize, identity, posterize,
    rotate, sharpness, shear_x, shear_y, solarize, translate_x, translate_y,
)


class RandAugment:
    """Apply `n` ops from the 14-op pool to a PIL image, magnitudes 1..m-1, each with probability 0.5."""

    def __init__(self, n: int, m: int = 10, pool: tuple = FIXMATCH_POOL) -> None:
        if n < 0 or m < 2:
            raise ValueError(f"RandAugment needs n >= 0 and m >= 2, got n={n}, m={m}")
        self.n, self.m, self.pool = n, m, pool

    def draw(self) -> list[tuple[Callable[[Image.Image, int], Image.Image], int]]:
        """The (op, magnitude) pairs to apply, drawn in the 2021 order: ops with replacement, then per op its
        magnitude (numpy, always drawn) and its coin (python)."""
        out = []
        for op in random.choices(self.pool, k=self.n):
            v = int(np.random.randint(1, self.m))
            if random.random() < 0.5:
                out.append((op, v))
        return out

    def __call__(self, img: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
        """PIL image in, PIL image out; a uint8 H x W x 3 array in, an array out (converted only if an op runs)."""
        todo = self.draw()
        if not todo:
            return img
        is_array = isinstance(img, np.ndarray)
        if is_array:
            img = Image.fromarray(np.ascontiguousarray(img), "RGB")
        for op, v in todo:
            img = op(img, v)
        return np.asarray(img) if is_array else img

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, m={self.m}, ops={len(self.pool)})"
