"""RandAugment(n, m) of the 2021 CLSA code (data_processing/randaugment.py), batched with per-sample draws.

Per sample: n ops drawn with replacement from FixMatch's 14-op pool, for each a magnitude v in 1..m-1 and a coin
(p 0.5; the op is skipped on tails), signed ops get a random sign. Draw t is applied to the whole batch at once:
every sample's op of that draw is one of three kinds, each computed for the batch and picked per sample,

    pixel maps (a 256-entry table per sample and channel): auto_contrast, equalize, posterize, solarize, identity
    blends with a degenerate image, factor 0.05 + 0.09 v: brightness (black), color (grey), contrast (mean grey),
                                                         sharpness (PIL's 3 x 3 smoothing, borders kept)
    affine maps, nearest neighbour, black fill:          rotate (3 v degrees), shear_x/y (0.03 v), translate_x/y
                                                         (int(0.03 v x size) pixels)

so there is no host synchronisation and no loop over images. Parameters are those of the PIL ops of the pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOL = ("auto_contrast", "brightness", "color", "contrast", "equalize", "identity", "posterize", "rotate",
        "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
OP = {name: i for i, name in enumerate(POOL)}
LUT_OPS = ("auto_contrast", "equalize", "posterize", "solarize")
BLEND_OPS = ("brightness", "color", "contrast", "sharpness")
AFFINE_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
LUMA = (0.299, 0.587, 0.114)


def gray(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma (ITU-R 601-2, as PIL's convert('L')) of N x 3 x H x W RGB."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)


def _histogram(q: torch.Tensor) -> torch.Tensor:
    """(N x 3 x 256) counts of the uint8 levels `q` (long, N x 3 x H x W)."""
    n, c = q.shape[:2]
    flat = q.reshape(n * c, -1)
    hist = torch.zeros(n * c, 256, device=q.device, dtype=torch.long)
    return hist.scatter_add_(1, flat, torch.ones_like(flat)).reshape(n, c, 256)


def _tables(q: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-sample, per-channel lookup tables (N x 3 x 256, long) of the pixel-map ops at magnitudes v."""
    levels = torch.arange(256, device=q.device)[None, None]
    hist = _histogram(q)
    present = hist > 0
    lo = torch.where(present, levels, 256).min(2, keepdim=True).values
    hi = torch.where(present, levels, -1).max(2, keepdim=True).values
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = torch.floor((levels - lo) * scale).clamp(0, 255).long()
    auto = torch.where(hi > lo, stretched, levels.expand_as(stretched))
    last = hist.gather(2, hi.clamp(min=0))  # count of the highest level present
    step = torch.div(hist.sum(2, keepdim=True) - last, 255, rounding_mode="floor")
    below = hist.cumsum(2) - hist
    spread = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp(min=1), rounding_mode="floor")
    equal = torch.where(step > 0, spread.clamp(max=255), levels.expand_as(spread))
    bits = (torch.div(v * 4, 10, rounding_mode="floor") + 4)[:, None, None]
    poster = levels & ~((1 << (8 - bits)) - 1)
    threshold = (256 - torch.div(v * 256, 10, rounding_mode="floor"))[:, None, None]
    solar = torch.where(levels < threshold, levels, 255 - levels)
    return {"auto_contrast": auto, "equalize": equal, "posterize": poster.expand_as(auto),
            "solarize": solar.expand_as(auto)}


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) with the one-pixel border kept."""
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).expand(x.shape[1], 1, 3, 3)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x, k, groups=x.shape[1])
    return out


def _affine_theta(op: torch.Tensor, v: torch.Tensor, sign: torch.Tensor, size: int) -> torch.Tensor:
    """N x 2 x 3 affine_grid matrices (align_corners=False) of each sample's affine op; identity otherwise.

    PIL maps an output pixel centre (X, Y) to the input point (aX + bY + c, dX + eY + f); for a square image of
    `size` pixels that is u_in = a u + b w + (a + b - 1 + 2c / size) in normalised coordinates, likewise for w.
    """
    n, dev = op.shape[0], op.device
    vf, sf = v.float(), sign.float()
    a = torch.ones(n, device=dev)
    b = torch.zeros(n, device=dev)
    c = torch.zeros(n, device=dev)
    d = torch.zeros(n, device=dev)
    e = torch.ones(n, device=dev)
    f = torch.zeros(n, device=dev)
    phi = -torch.deg2rad(sf * torch.floor(vf * 3))  # rotate(angle): counter-clockwise about the centre
    rot = op == OP["rotate"]
    centre = size / 2
    cos, sin = torch.cos(phi), torch.sin(phi)
    a, b, d, e = (torch.where(rot, cos, a), torch.where(rot, sin, b), torch.where(rot, -sin, d),
                  torch.where(rot, cos, e))
    c = torch.where(rot, centre - cos * centre - sin * centre, c)
    f = torch.where(rot, centre + sin * centre - cos * centre, f)
    shear = sf * vf * 0.03
    b = torch.where(op == OP["shear_x"], shear, b)
    d = torch.where(op == OP["shear_y"], shear, d)
    shift = sf * torch.floor(vf * 0.03 * size)
    c = torch.where(op == OP["translate_x"], shift, c)
    f = torch.where(op == OP["translate_y"], shift, f)
    row_u = torch.stack([a, b, a + b - 1 + 2 * c / size], 1)
    row_w = torch.stack([d, e, d + e - 1 + 2 * f / size], 1)
    return torch.stack([row_u, row_w], 1)


def apply_op(x: torch.Tensor, op: torch.Tensor, v: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Apply to each sample i of x (N x 3 x S x S, [0, 1]) its op `op[i]` (index into POOL, -1: none) at magnitude
    v[i] with sign sign[i]."""
    pick = op[:, None, None, None]
    q = torch.round(x * 255).long()
    tables = _tables(q, v)
    lut = torch.arange(256, device=x.device).expand(x.shape[0], 3, 256)
    for name in LUT_OPS:
        lut = torch.where((op == OP[name])[:, None, None], tables[name], lut)
    mapped = lut.gather(2, q.reshape(q.shape[0], 3, -1)).reshape(q.shape).float() / 255
    is_lut = torch.zeros_like(op, dtype=torch.bool)
    for name in LUT_OPS:
        is_lut |= op == OP[name]
    x = torch.where(is_lut[:, None, None, None], mapped, x)
    grey = gray(x)
    degenerate = torch.where(pick == OP["brightness"], torch.zeros_like(x),
                             torch.where(pick == OP["color"], grey.expand_as(x),
                                         torch.where(pick == OP["contrast"],
                                                     torch.round(grey.mean((2, 3), keepdim=True) * 255).div(255)
                                                     .expand_as(x), _smooth(x))))
    factor = (0.05 + 0.09 * v.float())[:, None, None, None]
    blended = (degenerate + factor * (x - degenerate)).clamp(0, 1)
    is_blend = torch.zeros_like(is_lut)
    for name in BLEND_OPS:
        is_blend |= op == OP[name]
    x = torch.where(is_blend[:, None, None, None], blended, x)
    is_affine = torch.zeros_like(is_lut)
    for name in AFFINE_OPS:
        is_affine |= op == OP[name]
    grid = F.affine_grid(_affine_theta(op, v, sign, x.shape[-1]), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return torch.where(is_affine[:, None, None, None], moved, x)


class BatchRandAugment:
    """RandAugment(n, m) on a batch N x 3 x S x S in [0, 1]: every sample its own ops, magnitudes, coins, signs."""

    def __init__(self, n: int, m: int = 10) -> None:
        if n < 0 or m < 2:
            raise ValueError(f"RandAugment needs n >= 0 and m >= 2, got n={n}, m={m}")
        self.n, self.m = n, m

    def draw(self, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(op, magnitude, sign), each batch x n; op is -1 where the coin skipped the draw."""
        dev = g.device
        op = torch.randint(0, len(POOL), (batch, self.n), generator=g, device=dev)
        v = torch.randint(1, self.m, (batch, self.n), generator=g, device=dev)
        keep = torch.rand(batch, self.n, generator=g, device=dev) < 0.5
        sign = torch.where(torch.rand(batch, self.n, generator=g, device=dev) < 0.5, -1, 1)
        return torch.where(keep, op, torch.full_like(op, -1)), v, sign

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.n == 0:  # --aug_times 0: the weak pipeline exactly (no draw, on any device's generator)
            return x
        op, v, sign = self.draw(x.shape[0], g)
        for t in range(self.n):
            x = apply_op(x, op[:, t], v[:, t], sign[:, t])
        return x

    def __repr__(self) -> str:
        return f"BatchRandAugment(n={self.n}, m={self.m}, ops={len(POOL)})"

