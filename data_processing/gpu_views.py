"""The CLSA views built batched on the training device, with per-sample randomness (`--views gpu`).

    views = BatchViews(plan)        # the ViewPlan of data_processing/view_plan.py, as MultiViewTransform's
    out = views(images, generator)  # images: uint8 3 x H x W tensors on one device, any sizes
    # out: [key, weak..., strong...], float32 N x 3 x size x size, normalised with the ImageNet mean and std

Per image and view, the draws of the CPU pipeline (data_processing/transforms.py): RandomResizedCrop (torchvision's
parameter distribution: 10 tries, then a centre crop) resized by `torchvision.ops.roi_align`, which averages
ceil(box / size) bilinear samples per output pixel and so antialiases a downscale; ColorJitter(0.4, 0.4, 0.4, 0.1)
with p 0.8, per-sample factors and a per-sample random order; grayscale p 0.2; Gaussian blur p 0.5 with sigma ~
U[0.1, 2] (PIL's radius is the standard deviation); horizontal flip p 0.5; for strong views RandAugment(aug_times,
10) (data_processing/gpu_randaugment.py); normalisation with the plan's mean and std. Pixels stay float32 in
[0, 1]: the CPU pipeline rounds to uint8 after every op, so the two differ by that quantisation, not in
distribution (tests/test_gpu_views.py).

Every draw comes from the `torch.Generator` passed in, so the same generator state gives the same views on the same
device. Loops run over views, ops and the distinct image shapes of a batch (one for a dataset of one size), never
over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from data_processing.gpu_randaugment import BatchRandAugment, gray
from data_processing.view_plan import ViewPlan

RATIO = (3 / 4, 4 / 3)
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = 6  # ceil(3 * max sigma): the kernel reaches 3 standard deviations


def uniform(n: int, lo: float, hi: float, g: torch.Generator, *shape: int) -> torch.Tensor:
    """n (x shape) draws of U[lo, hi) on the generator's device."""
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g, device=g.device)


def crop_boxes(hw: torch.Tensor, scale: Sequence[float], g: torch.Generator, ratio: Sequence[float] = RATIO
               ) -> torch.Tensor:
    """RandomResizedCrop.get_params for every row of `hw` (N x 2 heights and widths): N x 4 (top, left, h, w).

    Ten tries of area ~ U[scale] x H W and log-aspect ~ U[log ratio]; the first that fits wins, else the centre crop
    of the clamped aspect; the position is uniform over the places the box fits.
    """
    n = hw.shape[0]
    height, width = hw[:, 0:1].float(), hw[:, 1:2].float()
    target = height * width * uniform(n, scale[0], scale[1], g, 10)
    aspect = torch.exp(uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, 10))
    w, h = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # index of the first try that fits (0 when none does)
    found = fits.any(1, keepdim=True)
    in_ratio = width / height
    centre_w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    centre_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    w = torch.where(found, w.gather(1, first), centre_w)
    h = torch.where(found, h.gather(1, first), centre_h)
    pos = torch.rand(n, 2, generator=g, device=g.device)
    top = torch.where(found, torch.floor(pos[:, 0:1] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(pos[:, 1:2] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.cat([top, left, h, w], 1)


class ImageBatch:
    """Decoded uint8 images of any sizes, stacked per distinct shape for cropping."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:
        if not images:
            raise ValueError("BatchViews needs at least one image")
        self.device = images[0].device
        self.n = len(images)
        shapes: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):  # shapes only; the pixels move once per group below
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] not in (1, 3):
                raise ValueError(f"image {i}: expected a uint8 tensor of shape (3 or 1, H, W), got "
                                 f"{img.dtype} {tuple(img.shape)}")
            shapes.setdefault(tuple(img.shape[-2:]), []).append(i)
        self.hw = torch.tensor([list(img.shape[-2:]) for img in images], device=self.device)
        self.groups = [(torch.tensor(idx, device=self.device),
                        torch.stack([images[i].expand(3, -1, -1) for i in idx]).float().div_(255))
                       for idx in shapes.values()]

    def crop(self, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """N x 3 x size x size: box i (top, left, h, w) of image i, resized by area-averaged bilinear sampling."""
        out = torch.empty(self.n, 3, size, size, device=self.device)
        for idx, stack in self.groups:
            b = boxes[idx]
            rois = torch.stack([torch.arange(len(idx), device=self.device, dtype=b.dtype), b[:, 1], b[:, 0],
                                b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], 1)
            out[idx] = roi_align(stack, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return out.clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in [0, 1), saturation, value of N x 3 x H x W RGB in [0, 1]."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    c = v - x.min(1).values
    s = torch.where(v > 0, c / v.clamp(min=1e-12), torch.zeros_like(v))
    cs = c.clamp(min=1e-12)
    h = torch.where(v == r, (g - b) / cs, torch.where(v == g, 2 + (b - r) / cs, 4 + (r - g) / cs))
    h = torch.where(c > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.4, hue: float = 0.1, p: float = 0.8
                 ) -> torch.Tensor:
    """ColorJitter(strength x 3, hue) with probability p: per sample its own factors and order of the 4 ops."""
    n = x.shape[0]
    factors = uniform(n, 1 - strength, 1 + strength, g, 3)
    shift = uniform(n, -hue, hue, g)
    order = torch.rand(n, 4, generator=g, device=g.device).argsort(1)  # a uniform random permutation per sample
    applied = torch.rand(n, generator=g, device=g.device) < p
    for position in range(4):
        op = torch.where(applied, order[:, position], torch.full_like(order[:, 0], -1))
        f = factors.gather(1, op.clamp(0, 2)[:, None])[:, :, None, None]
        grey = gray(x)
        blend_to = torch.where((op == 1)[:, None, None, None], grey.mean((2, 3), keepdim=True),
                               torch.where((op == 0)[:, None, None, None], torch.zeros_like(grey), grey))
        blended = (blend_to + f * (x - blend_to)).clamp(0, 1)
        h, s, v = rgb_to_hsv(x)
        hued = hsv_to_rgb((h + shift[:, None, None]) % 1.0, s, v)
        x = torch.where((op == 3)[:, None, None, None], hued, torch.where((op >= 0)[:, None, None, None] & (op < 3)
                        [:, None, None, None], blended, x))
    return x


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    hit = torch.rand(x.shape[0], generator=g, device=g.device) < p
    return torch.where(hit[:, None, None, None], gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, g: torch.Generator, p: float = 0.5, sigma: Sequence[float] = BLUR_SIGMA
                  ) -> torch.Tensor:
    """Separable Gaussian blur with per-sample sigma ~ U[sigma], edges replicated, applied with probability p."""
    n, c, hgt, wid = x.shape
    s = uniform(n, sigma[0], sigma[1], g)
    hit = torch.rand(n, generator=g, device=g.device) < p
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / s[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n c) x taps
    y = F.pad(x.reshape(1, n * c, hgt, wid), (BLUR_RADIUS,) * 4, mode="replicate")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return torch.where(hit[:, None, None, None], y.reshape(n, c, hgt, wid), x)


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    hit = torch.rand(x.shape[0], generator=g, device=g.device) < p
    return torch.where(hit[:, None, None, None], x.flip(-1), x)


class BatchViews:
    """[key, weak..., strong...] for a batch of decoded images, as `plan` lays them out (same views as
    `MultiViewTransform`'s, built batched)."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.randaugment = BatchRandAugment(plan.aug_times, 10)
        self._mean_std: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, built once

    def __call__(self, images: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        batch = ImageBatch(images)
        if batch.device not in self._mean_std:
            self._mean_std[batch.device] = tuple(torch.tensor(v, device=batch.device)[None, :, None, None]
                                                 for v in (self.plan.mean, self.plan.std))
        mean, std = self._mean_std[batch.device]
        out = []
        for crop, strong in self.plan.view_crops():
            x = batch.crop(crop_boxes(batch.hw, crop.scale, generator), crop.size)
            x = random_flip(gaussian_blur(random_grayscale(color_jitter(x, generator), generator), generator),
                            generator)
            if strong:
                x = self.randaugment(x, generator)
            out.append((x - mean) / std)
        return out
