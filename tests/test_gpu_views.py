"""`--views gpu`'s batched views (data_processing/gpu_views.py) against the CPU pipeline, on CPU tensors.

Each op is checked against its PIL counterpart pixel by pixel, each random draw against the CPU pipeline's
distribution (two-sample KS p-values, or proportions within 5 standard errors), and whole views by the
distributions of their channel means, spreads, colourfulness and gradient energy. The tolerances leave room only
for float-vs-uint8 rounding. Mutations tried by hand, each failing the test named:
no blur, grayscale p 0, or no RandAugment -> test_views_match_the_cpu_pipeline_in_distribution; rotation the other
way, equalize's step off by one, blend factor 0.05 + 0.08 v -> test_each_randaugment_op_matches_pil; blur sigma
U[0.1, 1.5] -> test_blur_rate_and_sigma_match_pil; jitter strength 0.3 -> test_jitter_brightness_factor_distribution;
crop area drawn as U^1.2 -> test_crop_area_aspect_and_position_match_torchvision.
"""

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from stats_support import same_distribution, same_rate
from torchvision import transforms as T

from benchmarks.photos import decode, photo_bytes
from data_processing import gpu_randaugment as gra
from data_processing import gpu_views as gv
from data_processing import randaugment as ra
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD, ViewPlan, expand_crops

CROPS = expand_crops([1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [decode(b).resize((100, 75)) for b in photo_bytes()]


def test_shapes_dtypes_and_normalisation(photos):
    views = gv.BatchViews(ViewPlan.build(CROPS, [0, 1], [1], 2))
    images = [to_tensor(p) for p in photos[:3]] + [torch.full((1, 20, 30), 128, dtype=torch.uint8)]
    out = views(images, gen())
    assert [tuple(o.shape) for o in out] == [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16)]
    assert views.plan.sizes() == [32, 32, 16, 16]
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)
    # a crop of a uniform image is that colour, normalised like ToTensor + Normalize
    flat = gv.ImageBatch([torch.full((3, 20, 30), 51, dtype=torch.uint8)]).crop(torch.tensor([[2., 3., 10., 12.]]), 8)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose((flat[0] - mean) / std, (0.2 - mean) / std * torch.ones(3, 8, 8), atol=1e-6)


def test_same_generator_state_gives_the_same_views(photos):
    views = gv.BatchViews(ViewPlan.build(CROPS, [0], [1], 5))
    images = [to_tensor(p) for p in photos[:4]]
    a, b, c = views(images, gen(3)), views(images, gen(3)), views(images, gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[2], c[2])


def test_crop_resize_matches_pil_on_a_box(photos):
    """roi_align's area-averaged resize against PIL's antialiased bilinear resize of the same box."""
    img = photos[0]
    box = (10, 20, 50, 60)  # top, left, h, w
    ours = gv.ImageBatch([to_tensor(img)]).crop(torch.tensor([box], dtype=torch.float), 24)[0]
    pil = T.functional.resized_crop(img, *box, [24, 24])
    ref = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
    assert (ours - ref).abs().mean() < 0.02  # a mirrored box (left/top swapped) is ~0.15 away


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.086, 0.429)])
def test_crop_area_aspect_and_position_match_torchvision(scale):
    random.seed(0)
    torch.manual_seed(0)
    w, h, n = 500, 375, 4000
    img = Image.new("RGB", (w, h))
    tv = [T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    ours = gv.crop_boxes(torch.tensor([[h, w]] * n), scale, gen()).tolist()
    for name, f in (("area", lambda c: c[2] * c[3] / (w * h)), ("aspect", lambda c: c[3] / c[2]),
                    ("centre x", lambda c: (c[1] + c[3] / 2) / w), ("centre y", lambda c: (c[0] + c[2] / 2) / h)):
        same_distribution([f(c) for c in ours], [f(c) for c in tv], f"crop {name} {scale}")
    assert all(0 <= c[0] and c[0] + c[2] <= h and 0 <= c[1] and c[1] + c[3] <= w for c in ours)


def test_grayscale_flip_and_jitter_rates(photos):
    x = torch.stack([to_tensor(photos[0].resize((16, 16)))] * 4000).float() / 255
    grey = gv.random_grayscale(x, gen(1))
    same_rate(int((grey[:, 0] == grey[:, 1]).all((1, 2)).sum()), len(x), 0.2 * len(x), len(x))
    flipped = gv.random_flip(x, gen(2))
    same_rate(int((flipped != x).any((1, 2, 3)).sum()), len(x), 0.5 * len(x), len(x))
    jittered = gv.color_jitter(x, gen(3))
    same_rate(int(((jittered - x).abs() > 1e-6).any((1, 2, 3)).sum()), len(x), 0.8 * len(x), len(x))


def test_jitter_brightness_factor_distribution(photos):
    """Per-sample jitter: the brightness factor seen through a mid-grey image matches torchvision's."""
    n = 2000
    x = torch.full((n, 3, 4, 4), 0.4)
    out = gv.color_jitter(x, gen(5))
    ours = (out[:, 0, 0, 0] / 0.4)[(out - x).abs().amax((1, 2, 3)) > 1e-6]  # grey: only brightness shows
    torch.manual_seed(0)
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    ref = [float(np.asarray(jitter(Image.new("RGB", (4, 4), (102, 102, 102))))[0, 0, 0]) / 102 for _ in range(n)]
    same_distribution(ours.tolist(), ref, "brightness factor")


def _impulse_variance(img: np.ndarray) -> float:
    row = img[img.shape[0] // 2].astype(float)
    row = row / row.sum()
    pos = np.arange(len(row)) - len(row) // 2
    return float((row * pos ** 2).sum())


def test_blur_rate_and_sigma_match_pil():
    """The blur of a centred impulse has variance sigma^2: compare those variances with PIL GaussianBlur's."""
    n, s = 1500, 31
    x = torch.zeros(n, 3, s, s)
    x[:, :, s // 2, s // 2] = 1.0
    out = gv.gaussian_blur(x, gen(7))
    hit = (out != x).any((1, 2, 3))
    same_rate(int(hit.sum()), n, 0.5 * n, n)
    ours = [_impulse_variance(o[0].numpy()) for o in out[hit]]
    rng = random.Random(0)
    impulse = np.zeros((s, s), np.uint8)
    impulse[s // 2, s // 2] = 255
    ref = [_impulse_variance(np.asarray(Image.fromarray(impulse).filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2)))))
           for _ in range(len(ours))]
    # PIL rounds to uint8, which drops the far tails: compare only sigmas it resolves (variance > 0.15)
    same_distribution([v for v in ours if v > 0.15], [v for v in ref if v > 0.15], "blur variance")


def test_randaugment_draws_match_the_cpu_pool():
    n = 20000
    op, v, sign = gra.BatchRandAugment(5, 10).draw(n // 5, gen(9))
    random.seed(0)
    np.random.seed(0)
    cpu = [pair for _ in range(n // 5) for pair in ra.RandAugment(5, 10).draw()]
    kept = op[op >= 0]
    same_rate(len(kept), n, len(cpu), n)
    names = [ra.FIXMATCH_POOL.index(f) for f, _ in cpu]
    assert [f.__name__ for f in ra.FIXMATCH_POOL] == list(gra.POOL)
    for i in range(len(gra.POOL)):
        same_rate(int((kept == i).sum()), len(kept), names.count(i), len(cpu))
    same_distribution(v[op >= 0].tolist(), [m for _, m in cpu], "magnitude")
    same_rate(int((sign == -1).sum()), sign.numel(), 0.5 * sign.numel(), sign.numel())


@pytest.mark.parametrize("name", gra.POOL)
@pytest.mark.parametrize("v", [2, 7])
def test_each_randaugment_op_matches_pil(photos, monkeypatch, name, v):
    img = photos[1].resize((40, 40))
    monkeypatch.setattr(ra, "_sign", lambda: -1)
    ref = torch.from_numpy(np.asarray(getattr(ra, name)(img, v)).copy()).permute(2, 0, 1).float() / 255
    x = to_tensor(img).float()[None] / 255
    ours = gra.apply_op(x, torch.tensor([gra.OP[name]]), torch.tensor([v]), torch.tensor([-1]))[0]
    diff = (ours - ref).abs()
    if name in gra.AFFINE_OPS:  # nearest neighbour: a few pixels on rounding boundaries may pick a neighbour
        assert (diff > 2 / 255).float().mean() < 0.05, (name, float((diff > 2 / 255).float().mean()))
    else:
        assert diff.mean() < 1.5 / 255 and (diff > 3 / 255).float().mean() < 0.02, (name, float(diff.mean()))


def _statistics(views: torch.Tensor) -> dict[str, list[float]]:
    x = views.double()
    grad = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    out = {f"mean {c}": x[:, c].mean((1, 2)).tolist() for c in range(3)}
    out["spread"] = x.std((2, 3)).mean(1).tolist()
    out["colourfulness"] = x.std(1).mean((1, 2)).tolist()  # 0 for a grey view
    out["gradient energy"] = grad.tolist()
    return out


def test_views_match_the_cpu_pipeline_in_distribution(photos):
    """Key, weak and strong views: channel means, spreads and gradient energy against MultiViewTransform's.
    Dropping the blur (gradient energy), the grayscale (colourfulness) or RandAugment (strong views) fails here."""
    reps = 60
    cpu_views = MultiViewTransform(ViewPlan.build(CROPS, [0], [1], 5))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cpu = [cpu_views(p) for _ in range(reps) for p in photos]
    images = [to_tensor(p) for _ in range(reps) for p in photos]
    ours = gv.BatchViews(ViewPlan.build(CROPS, [0], [1], 5))(images, gen(11))
    for k, kind in enumerate(("key", "weak", "strong")):
        a, b = _statistics(ours[k]), _statistics(torch.stack([v[k] for v in cpu]))
        for stat in a:
            same_distribution(a[stat], b[stat], f"{kind} view {stat}")


@pytest.mark.parametrize("hue", [0.07, -0.1])
def test_hue_shift_matches_torchvision(hue):
    x = torch.rand(4, 3, 16, 16, generator=gen(2))
    h, s, v = gv.rgb_to_hsv(x)
    ref = torch.stack([T.functional.adjust_hue(xi, hue) for xi in x])
    assert (gv.hsv_to_rgb((h + hue) % 1.0, s, v) - ref).abs().max() < 1e-5


def test_device_views_decode_mixed_files_and_replace_unreadable(photos, tmp_path):
    """JPEG, PNG and grayscale files decode; a truncated JPEG is named and its slot takes the next readable image;
    with strict, it stops the run."""
    from data_processing.device_views import DeviceViews, read_file_bytes
    paths = {}
    for name, fmt, img in (("a.jpg", "JPEG", photos[0]), ("b.png", "PNG", photos[1]),
                           ("c.jpg", "JPEG", photos[2].convert("L"))):
        paths[name] = str(tmp_path / name)
        img.save(paths[name], fmt)
    good = open(paths["a.jpg"], "rb").read()
    paths["bad.jpg"] = str(tmp_path / "bad.jpg")
    open(paths["bad.jpg"], "wb").write(good[: len(good) // 2])
    names = ["bad.jpg", "a.jpg", "b.png", "c.jpg"]
    batch = ([read_file_bytes(paths[n]) for n in names], names)
    make = DeviceViews(gv.BatchViews(ViewPlan.build(CROPS, [0], [1], 2)), torch.device("cpu"), seed=1, rank=0)
    views, bad = make(batch, 0, 0)
    assert bad == ["bad.jpg"] and [tuple(v.shape) for v in views] == [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16)]
    again, _ = make(batch, 0, 0)
    assert all(torch.equal(x, y) for x, y in zip(views, again, strict=True))  # seeded by (seed, epoch, it, rank)
    with pytest.raises(RuntimeError, match="unreadable image bad.jpg"):
        DeviceViews(make.views, torch.device("cpu"), 1, 0, strict=True)(batch, 0, 0)
