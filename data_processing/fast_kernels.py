"""The compiled loops behind `data_processing.fast_ops` (numba, optional), on flat uint8 H x W x 3 arrays.

Private to `fast_ops`, which calls them when numba is installed and calls PIL itself otherwise; what each loop
reproduces (PIL's blend, RGB -> L, RGB -> HSV -> RGB, extended box blur, ToTensor + Normalize) is listed there.
Set CLSA_NO_NUMBA=1 to run without numba even where it is installed.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:  # numba is optional: the PIL fallback computes the same values
    if os.environ.get("CLSA_NO_NUMBA"):
        raise ImportError
    import numba
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - depends on the environment
    numba = None
    HAVE_NUMBA = False

f32, f64 = np.float32, np.float64


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if HAVE_NUMBA else fn


# ----------------------------------------------------------------------------------------------------------- blend
# Loops run over flat pixel indices with selects instead of branches, so LLVM vectorises them.
@_jit
def _blend_const(src, out, c, alpha):  # Image.blend(constant image c, src, alpha)
    a = f32(alpha)
    cf = f32(c)
    s, o = src.reshape(-1), out.reshape(-1)
    if a >= 0 and a <= 1:
        for i in range(s.size):
            o[i] = np.int32(cf + a * f32(np.int32(s[i]) - np.int32(c)))
    else:
        for i in range(s.size):
            t = cf + a * f32(np.int32(s[i]) - np.int32(c))
            o[i] = np.int32(min(max(t, f32(0)), f32(255)))


@_jit
def _luma(r, g, b):  # PIL's RGB -> L
    return (np.int32(r) * 19595 + np.int32(g) * 38470 + np.int32(b) * 7471 + 0x8000) >> 16


@_jit
def _blend_gray(src, out, alpha):  # Image.blend(src.convert('L').convert('RGB'), src, alpha)
    a = f32(alpha)
    clip = not (a >= 0 and a <= 1)
    s, o = src.reshape(-1), out.reshape(-1)
    for px in range(s.size // 3):
        g = _luma(s[3 * px], s[3 * px + 1], s[3 * px + 2])
        gf = f32(g)
        for k in range(3):
            t = gf + a * f32(np.int32(s[3 * px + k]) - g)
            o[3 * px + k] = np.int32(min(max(t, f32(0)), f32(255)) if clip else t)


@_jit
def _mean_luma(src):  # int(ImageStat.Stat(src.convert('L')).mean[0] + 0.5)
    s = src.reshape(-1)
    n = s.size // 3
    total = 0
    for px in range(n):
        total += _luma(s[3 * px], s[3 * px + 1], s[3 * px + 2])
    return int(total / n + 0.5)


@_jit
def _gray(src, out):  # torchvision to_grayscale(src, 3) on PIL
    s, o = src.reshape(-1), out.reshape(-1)
    for px in range(s.size // 3):
        g = _luma(s[3 * px], s[3 * px + 1], s[3 * px + 2])
        o[3 * px] = g
        o[3 * px + 1] = g
        o[3 * px + 2] = g


# ------------------------------------------------------------------------------------------------------------- hue
@_jit
def _hue(src, out, shift):
    """PIL RGB -> HSV (uint8), H += shift (mod 256), HSV -> RGB, with PIL's float/double roundings."""
    s, o = src.reshape(-1), out.reshape(-1)
    for px in range(s.size // 3):
        r, g, b = np.int32(s[3 * px]), np.int32(s[3 * px + 1]), np.int32(s[3 * px + 2])
        maxc, minc = max(r, max(g, b)), min(r, min(g, b))
        cr_i = maxc - minc
        cr = f32(max(cr_i, 1))
        sat = cr / f32(max(maxc, 1))
        rc, gc, bc = f32(maxc - r) / cr, f32(maxc - g) / cr, f32(maxc - b) / cr
        h_r = bc - gc
        h_g = f32(2.0 + f64(rc) - f64(bc))
        h_b = f32(4.0 + f64(gc) - f64(rc))
        x = f64(h_r if r == maxc else (h_g if g == maxc else h_b)) / 6.0 + 1.0
        hh = f32(x - 1.0 if x >= 1.0 else x)  # fmod(x, 1) for x in [5/6, 11/6), exact
        uh = min(max(np.int32(f64(hh) * 255.0), 0), 255)
        us = min(max(np.int32(f64(sat) * 255.0), 0), 255)
        hf = f64((uh + shift) & 255) * 6.0 / 255.0
        i = np.int32(hf)
        f = f32(hf - i)
        fs = f32(f64(us) / 255.0)
        v = maxc
        vf = f64(v)
        p = np.int32(vf * (1.0 - f64(fs)) + 0.5)
        q = np.int32(vf * (1.0 - f64(fs * f)) + 0.5)
        t = np.int32(vf * (1.0 - f64(fs * (f32(1.0) - f))) + 0.5)
        k = i - 6 if i >= 6 else i
        ro = v if (k == 0 or k == 5) else (q if k == 1 else (p if (k == 2 or k == 3) else t))
        go = t if k == 0 else (v if (k == 1 or k == 2) else (q if k == 3 else p))
        bo = p if (k == 0 or k == 1) else (t if k == 2 else (v if (k == 3 or k == 4) else q))
        grey = us == 0 or cr_i == 0
        o[3 * px] = v if grey else ro
        o[3 * px + 1] = v if grey else go
        o[3 * px + 2] = v if grey else bo


# ------------------------------------------------------------------------------------------------------------ blur
def box_blur_params(sigma: float, passes: int = 3) -> tuple[int, int, int]:
    """PIL's extended box for a Gaussian of std `sigma` split into `passes` boxes: (integer radius, ww, fw).

    Each pass computes out = (sum_{|d| <= r} in[x+d] * ww + (in[x-r-1] + in[x+r+1]) * fw + 2^23) >> 24 with edge
    replication, where r + alpha (the fractional radius) matches the pass variance sigma^2 / passes.
    """
    sigma2 = sigma * sigma / passes
    lo = math.floor((math.sqrt(12.0 * sigma2 + 1.0) - 1.0) / 2.0)
    alpha = (2 * lo + 1) * (lo * (lo + 1) - 3 * sigma2) / (6 * (sigma2 - (lo + 1) * (lo + 1)))
    radius = f32(lo + alpha)
    r = int(radius)
    ww = int(f32(1 << 24) / (radius * f32(2) + f32(1)))
    fw = ((1 << 24) - (2 * r + 1) * ww) // 2
    return r, ww, fw


@_jit
def _box_px(s, j, step, lo, hi, r, ww, fw):  # one output of a pass, neighbours clamped to [lo, hi] (edge pixels)
    acc = 0
    for d in range(-r, r + 1):
        acc += s[min(max(j + d * step, lo), hi)]
    edge = np.int64(s[min(max(j - (r + 1) * step, lo), hi)]) + s[min(max(j + (r + 1) * step, lo), hi)]
    return (acc * ww + edge * fw + (1 << 23)) >> 24


@_jit
def _box_pass(s, o, h, w, along_x, r, ww, fw):
    """One extended-box pass (r = 0 or 1) over the flat H*W*3 image `s` into `o`, along x or along y.

    The interior is one flat loop over offset views (no negative indices, so LLVM vectorises it); the outputs whose
    window crosses an edge (the first/last r+1 pixels of each row, or rows) are then recomputed with clamping.
    """
    step = 3 if along_x else 3 * w
    W, F, HALF, SH = np.uint32(ww), np.uint32(fw), np.uint32(1 << 23), np.uint32(24)
    m = s.size - 2 * (r + 1) * step
    if r == 0:
        s0, s1, s2, oo = s[0:], s[step:], s[2 * step:], o[step:]
        for i in range(m):
            oo[i] = (np.uint32(s1[i]) * W + (np.uint32(s0[i]) + np.uint32(s2[i])) * F + HALF) >> SH
    else:
        s0, s1, s2, s3, s4, oo = s[0:], s[step:], s[2 * step:], s[3 * step:], s[4 * step:], o[2 * step:]
        for i in range(m):
            oo[i] = ((np.uint32(s1[i]) + np.uint32(s2[i]) + np.uint32(s3[i])) * W
                     + (np.uint32(s0[i]) + np.uint32(s4[i])) * F + HALF) >> SH
    n_edge = 2 * (r + 1)
    if along_x:
        for y in range(h):
            base = y * 3 * w
            for i in range(n_edge):
                x = i if i <= r else w - n_edge + i
                for k in range(3):
                    j = base + 3 * x + k
                    o[j] = _box_px(s, j, 3, base + k, base + 3 * (w - 1) + k, r, ww, fw)
    else:
        for i in range(n_edge):
            y = i if i <= r else h - n_edge + i
            for c in range(3 * w):
                o[y * 3 * w + c] = _box_px(s, y * 3 * w + c, step, c, (h - 1) * 3 * w + c, r, ww, fw)


@_jit
def _gaussian_blur(img, r, ww, fw):  # 3 passes along x, then 3 along y (PIL's order), rounding after each
    h, w = img.shape[0], img.shape[1]
    a = img.copy().reshape(-1)
    b = np.empty_like(a)
    for _ in range(3):
        _box_pass(a, b, h, w, True, r, ww, fw)
        a, b = b, a
    for _ in range(3):
        _box_pass(a, b, h, w, False, r, ww, fw)
        a, b = b, a
    return a.reshape(h, w, 3)


@_jit
def _normalize(src, lut, flip, out):
    h, w = src.shape[0], src.shape[1]
    for c in range(3):
        t = lut[c]
        for y in range(h):
            for x in range(w):
                out[c, y, x] = t[src[y, w - 1 - x if flip else x, c]]
