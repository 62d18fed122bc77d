"""The fast view pipeline draws the same augmentations as the 2021 reference pipeline (statistically).

Both pipelines run on real photos; the tests compare, fast vs reference: how often each op is applied, the
distributions of its parameters (crop scale and aspect, jitter factors and order, blur sigma, RandAugment ops), and
statistics of the produced tensors. Dropping an op or changing a parameter moves one of these far outside the
tolerances (two-sample KS p-values, or proportions more than 5 standard errors apart).
"""

import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import stats
from stats_support import P_MIN, same_distribution, same_rate
from torchvision import transforms as T
from torchvision.transforms import functional as F

from benchmarks import reference_views as ref
from benchmarks.photos import decode, photo_bytes
from data_processing import fast_ops
from data_processing import fast_views as fv
from data_processing import randaugment as ra
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD, ViewPlan, expand_crops


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [decode(b) for b in photo_bytes()]


@pytest.fixture(scope="module")
def small_photos(photos) -> list[Image.Image]:
    return [p.resize((100, 75)) for p in photos]


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.086, 0.429)])
def test_crop_area_aspect_and_position_match_torchvision(scale):
    random.seed(0)
    torch.manual_seed(0)
    w, h, n = 500, 375, 4000
    img = Image.new("RGB", (w, h))
    tv = [T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    ours = [fv.crop_box(w, h, scale, (3 / 4, 4 / 3)) for _ in range(n)]
    for name, f in (("area", lambda c: c[2] * c[3] / (w * h)), ("aspect", lambda c: c[3] / c[2]),
                    ("centre x", lambda c: (c[1] + c[3] / 2) / w), ("centre y", lambda c: (c[0] + c[2] / 2) / h)):
        same_distribution([f(c) for c in ours], [f(c) for c in tv], f"crop {name} {scale}")


class Recorder:
    """Records which colour / blur / flip / RandAugment operations a pipeline applied, and with what."""

    def __init__(self) -> None:
        self.jitter: list[tuple[str, float]] = []  # (op, factor) in call order
        self.gray = self.blur_calls = self.flips = 0
        self.sigmas: list[float] = []
        self.ra_ops: list[str] = []


def _record_fast(monkeypatch, rec: Recorder) -> None:
    for name in ("brightness", "contrast", "saturation", "hue"):
        fn = getattr(fast_ops, name)
        monkeypatch.setattr(fast_ops, name, lambda x, f, fn=fn, name=name: (rec.jitter.append((name, f)), fn(x, f))[1])
    gray, blur, flip = fast_ops.grayscale, fast_ops.gaussian_blur, fv.HorizontalFlip.__call__
    monkeypatch.setattr(fast_ops, "grayscale", lambda x: (setattr(rec, "gray", rec.gray + 1), gray(x))[1])
    monkeypatch.setattr(fast_ops, "gaussian_blur", lambda x, s: (rec.sigmas.append(s), blur(x, s))[1])

    def flip_spy(self, x):
        out = flip(self, x)
        rec.flips += out.strides[1] < 0
        return out
    monkeypatch.setattr(fv.HorizontalFlip, "__call__", flip_spy)


def _record_reference(monkeypatch, rec: Recorder) -> None:
    names = {"adjust_brightness": "brightness", "adjust_contrast": "contrast", "adjust_saturation": "saturation",
             "adjust_hue": "hue"}
    for tv_name, name in names.items():
        fn = getattr(F, tv_name)
        monkeypatch.setattr(F, tv_name, lambda x, f, fn=fn, name=name: (rec.jitter.append((name, f)), fn(x, f))[1])
    gray, flip = F.rgb_to_grayscale, F.hflip
    monkeypatch.setattr(F, "rgb_to_grayscale", lambda x, num_output_channels=1: (
        setattr(rec, "gray", rec.gray + 1), gray(x, num_output_channels))[1])
    monkeypatch.setattr(F, "hflip", lambda x: (setattr(rec, "flips", rec.flips + 1), flip(x))[1])

    class SpyBlur(ImageFilter.GaussianBlur):
        def __init__(self, radius=2):
            rec.sigmas.append(radius)
            super().__init__(radius)
    monkeypatch.setattr(ref.ImageFilter, "GaussianBlur", SpyBlur)


def _spy_pool(pool, rec: Recorder, names):
    def spy(op, nm):
        return lambda img, v: (rec.ra_ops.append(nm), op(img, v))[1]
    return tuple(spy(op, nm) for op, nm in zip(pool, names, strict=True))


RA_NAMES = [f.__name__ for f in ra.FIXMATCH_POOL]


def _run_views(kind: str, monkeypatch, photos, n: int, size: int = 32) -> Recorder:
    """n strong views of `size` px (all ops of the weak pipeline plus RandAugment) from one pipeline."""
    rec = Recorder()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    if kind == "fast":
        _record_fast(monkeypatch, rec)
        view = fv.strong_view(size, (0.2, 1.0), 5)
        aug = next(t for t in view.transforms if isinstance(t, ra.RandAugment))
        aug.pool = _spy_pool(aug.pool, rec, RA_NAMES)
    else:
        _record_reference(monkeypatch, rec)
        monkeypatch.setattr(ref, "FIXMATCH_OPS", _spy_pool(ref.FIXMATCH_OPS, rec, RA_NAMES))
        view = ref.ReferenceMultiCrop([size], [1], [0.2], [1.0], 5, init_size=size).trans[2]  # crop 0's strong view
    for i in range(n):
        view(photos[i % len(photos)])
    monkeypatch.undo()
    return rec


@pytest.fixture(scope="module")
def recorded(small_photos):
    mp = pytest.MonkeyPatch()
    n = 3000
    out = {k: _run_views(k, mp, small_photos, n) for k in ("fast", "reference")}
    mp.undo()
    return n, out


def test_op_application_rates_match_reference(recorded):
    n, rec = recorded
    fast, refr = rec["fast"], rec["reference"]
    expected = {"jitter": 0.8, "gray": 0.2, "blur": 0.5, "flip": 0.5}
    for name, get in (("jitter", lambda r: sum(op == "brightness" for op, _ in r.jitter)), ("gray", lambda r: r.gray),
                      ("blur", lambda r: len(r.sigmas)), ("flip", lambda r: r.flips)):
        same_rate(get(fast), n, get(refr), n)
        same_rate(get(fast), n, round(expected[name] * 10 * n), 10 * n)  # and the nominal probability
    # RandAugment: 5 draws with replacement, each applied with probability 1/2 -> 2.5 ops per view, uniform pool
    same_rate(len(fast.ra_ops), 5 * n, len(refr.ra_ops), 5 * n)
    cf, cr = Counter(fast.ra_ops), Counter(refr.ra_ops)
    table = np.array([[cf[k] for k in RA_NAMES], [cr[k] for k in RA_NAMES]])
    assert stats.chi2_contingency(table).pvalue > P_MIN
    assert stats.chisquare(table[0]).pvalue > P_MIN  # uniform over the 14 ops


def test_jitter_factors_order_and_blur_sigma_match_reference(recorded):
    _, rec = recorded
    for name in ("brightness", "contrast", "saturation", "hue"):
        a = [f for op, f in rec["fast"].jitter if op == name]
        b = [f for op, f in rec["reference"].jitter if op == name]
        same_distribution(a, b, f"{name} factor")
    lo_hi = {"brightness": (0.6, 1.4), "hue": (-0.1, 0.1)}
    for name, (lo, hi) in lo_hi.items():
        a = [f for op, f in rec["fast"].jitter if op == name]
        assert lo <= min(a) and max(a) <= hi and min(a) < lo + 0.01 and max(a) > hi - 0.01
    # random order: which of the four comes first is uniform in both
    firsts = {k: Counter(r.jitter[i][0] for i in range(0, len(r.jitter), 4)) for k, r in rec.items()}
    table = np.array([[firsts[k][op] for op in ("brightness", "contrast", "saturation", "hue")] for k in firsts])
    assert stats.chi2_contingency(table).pvalue > P_MIN and stats.chisquare(table[0]).pvalue > P_MIN
    same_distribution(rec["fast"].sigmas, rec["reference"].sigmas, "blur sigma")
    assert 0.1 <= min(rec["fast"].sigmas) and max(rec["fast"].sigmas) <= 2.0


def _view_stats(v: torch.Tensor) -> list[float]:
    """Per view: channel means and stds, mean |horizontal gradient| (blur-sensitive), gray or not."""
    grad = (v[:, :, 1:] - v[:, :, :-1]).abs().mean().item()
    x = v * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    is_gray = float(torch.allclose(x[0], x[1], atol=1e-6) and torch.allclose(x[1], x[2], atol=1e-6))
    return [*v.mean((1, 2)).tolist(), *v.std((1, 2)).tolist(), grad, is_gray]


@pytest.fixture(scope="module")
def single_crop_views(photos):
    """The README single-crop views (key 224, weak 224, strong 96) from both pipelines on the same photos."""
    crops = expand_crops([1, 1], [224, 96], [0.2, 0.086], [1.0, 0.429])
    fast = MultiViewTransform(ViewPlan.build(crops, [0], [1], 5))
    reference = ref.ReferenceMultiCrop([224, 96], [1, 1], [0.2, 0.086], [1.0, 0.429], 5)
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only wait for each other on a busy machine
    n = 200
    out = {"fast": [], "reference": []}
    try:
        for i in range(n):
            img = photos[i % len(photos)]
            out["fast"].append([_view_stats(v) for v in fast(img)])
            out["reference"].append([_view_stats(v) for v in ref.pick(reference(img), [0], [1])])
    finally:
        torch.set_num_threads(threads)
    return {k: np.asarray(v) for k, v in out.items()}  # n x 3 views x 8 statistics


@pytest.mark.parametrize("view", [0, 1, 2], ids=["key224", "weak224", "strong96"])
def test_view_tensor_statistics_match_reference(single_crop_views, view):
    a, b = single_crop_views["fast"][:, view], single_crop_views["reference"][:, view]
    names = ["mean R", "mean G", "mean B", "std R", "std G", "std B", "|grad x|"]
    for j, name in enumerate(names):
        same_distribution(a[:, j], b[:, j], f"view {view} {name}")
    n = len(a)
    same_rate(int(a[:, 7].sum()), n, int(b[:, 7].sum()), n)  # grayscale views (p = 0.2, rarely by chance)
