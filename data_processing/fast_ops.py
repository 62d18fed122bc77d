"""Pixel ops of the MoCo v2 / CLSA view pipeline on uint8 H x W x 3 arrays, bit-exact with PIL and torchvision.

Each function returns exactly what the PIL path the 2021 code used returns (torchvision's PIL functional ops,
PIL's `GaussianBlur`, `ToTensor` + `Normalize`); tests/test_fast_views_exact.py checks every one against PIL (the
colour conversions on all 2^24 colours). With numba installed the ops run as compiled loops over the array
(`data_processing.fast_kernels`); without it they call PIL itself, so results never depend on whether numba is
present, only the speed does.

    brightness/contrast/saturation  PIL ImageEnhance = Image.blend(degenerate, img, factor) in float32, truncated
    hue                             PIL RGB -> HSV (uint8) -> H + int(hue * 255) (mod 256) -> RGB
    grayscale                       PIL convert('L') = (19595 R + 38470 G + 7471 B + 2^15) >> 16, replicated
    gaussian_blur                   PIL GaussianBlur(sigma): 3 extended box passes along x, then 3 along y
    to_normalized_tensor            (x / 255 - mean) / std in float32, CHW, optionally mirrored (the flip)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from data_processing.fast_kernels import (
    HAVE_NUMBA,
    _blend_const,
    _blend_gray,
    _gaussian_blur,
    _gray,
    _hue,
    _mean_luma,
    _normalize,
    box_blur_params,
)

__all__ = ["HAVE_NUMBA", "box_blur_params", "brightness", "contrast", "gaussian_blur", "grayscale", "hue",
           "hue_shift", "normalization_lut", "saturation", "to_normalized_tensor", "warmup"]


def normalization_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """lut[c, v] = (v / 255 - mean[c]) / std[c], computed with the same float32 torch ops as ToTensor+Normalize."""
    v = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32)[:, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:, None]
    return (v[None].expand(len(mean), 256) - m).div(s).contiguous().numpy()


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(img), "RGB")


def _enhance(img: np.ndarray, factor: float, enhancer: type, blend: object, *degenerate: object) -> np.ndarray:
    """PIL `enhancer(img).enhance(factor)`; with numba, `blend(img, out, *degenerate, factor)` computes the same."""
    if not HAVE_NUMBA:
        return np.asarray(enhancer(_pil(img)).enhance(factor))
    img = np.ascontiguousarray(img)
    out = np.empty_like(img)
    blend(img, out, *[d(img) if callable(d) else d for d in degenerate], factor)
    return out


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_brightness on a PIL image (blend with black)."""
    return _enhance(img, factor, ImageEnhance.Brightness, _blend_const, 0)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_contrast on a PIL image (blend with the rounded mean luma)."""
    return _enhance(img, factor, ImageEnhance.Contrast, _blend_const, _mean_luma)


def saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_saturation on a PIL image (blend with the luma)."""
    return _enhance(img, factor, ImageEnhance.Color, _blend_gray)


def hue_shift(hue_factor: float) -> int:
    """The uint8 shift torchvision adds to PIL's H channel: int32(hue * 255) wrapped to 0..255."""
    return int(np.int32(hue_factor * 255).astype(np.uint8))


def hue(img: np.ndarray, hue_factor: float) -> np.ndarray:
    """torchvision adjust_hue on a PIL image."""
    if not HAVE_NUMBA:
        from torchvision.transforms import functional as F
        return np.asarray(F.adjust_hue(_pil(img), hue_factor))
    img = np.ascontiguousarray(img)
    out = np.empty_like(img)
    _hue(img, out, hue_shift(hue_factor))
    return out


def grayscale(img: np.ndarray) -> np.ndarray:
    """torchvision rgb_to_grayscale(img, 3) on a PIL image."""
    if not HAVE_NUMBA:
        return np.repeat(np.asarray(_pil(img).convert("L"))[..., None], 3, axis=2)
    img = np.ascontiguousarray(img)
    out = np.empty_like(img)
    _gray(img, out)
    return out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """PIL `img.filter(ImageFilter.GaussianBlur(radius=sigma))`."""
    r, ww, fw = box_blur_params(sigma)
    h, w = img.shape[:2]
    if not HAVE_NUMBA or r > 1 or min(h, w) < 2 * (r + 1) + 1:  # the kernels cover sigma <= ~2.1 and real sizes
        return np.asarray(_pil(img).filter(ImageFilter.GaussianBlur(radius=sigma)))
    return _gaussian_blur(np.ascontiguousarray(img), r, ww, fw)


def to_normalized_tensor(img: np.ndarray, lut: np.ndarray, flip: bool = False) -> torch.Tensor:
    """ToTensor + Normalize of `img` (mirrored left-right first when `flip`) as a float32 3 x H x W tensor."""
    if not HAVE_NUMBA:
        a = img[:, ::-1] if flip else img
        return torch.from_numpy(np.ascontiguousarray(np.stack([lut[c][a[..., c]] for c in range(3)])))
    out = np.empty((3, img.shape[0], img.shape[1]), np.float32)
    _normalize(np.ascontiguousarray(img), lut, flip, out)
    return torch.from_numpy(out)


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel for writable and read-only inputs (arrays straight from
    PIL are read-only). Call it before forking loader workers, so they inherit the compiled code."""
    if not HAVE_NUMBA:
        return
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    lut = normalization_lut((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    frozen = a.copy()
    frozen.setflags(write=False)
    for x in (a, frozen):
        for f in (0.5, 1.5):
            brightness(x, f), contrast(x, f), saturation(x, f)
        hue(x, 0.05), grayscale(x), gaussian_blur(x, 1.0), to_normalized_tensor(x, lut, True)
