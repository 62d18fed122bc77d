"""The fast view pipeline computes exactly what the PIL/torchvision pipeline computes.

Every pixel op of data_processing.fast_ops is compared with the PIL op (colour conversions on all 2^24 colours), the
crop with torchvision's crop+resize, and whole views with the torchvision functional ops replayed on the same draws.
"""

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as F

from benchmarks.photos import decode, photo_bytes
from data_processing import fast_ops
from data_processing import fast_views as fv
from data_processing.randaugment import RandAugment
from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD

needs_numba = pytest.mark.skipif(not fast_ops.HAVE_NUMBA, reason="numba not installed: fast_ops calls PIL itself")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [np.asarray(decode(b)) for b in photo_bytes()]


@pytest.fixture(scope="module")
def all_colours() -> np.ndarray:
    i = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([(i >> 16) & 255, (i >> 8) & 255, i & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a))


@needs_numba
@pytest.mark.parametrize("hue", [-0.1, -0.0431, 0.0, 0.05, 0.1])
def test_hue_on_every_colour(all_colours, hue):
    assert np.array_equal(fast_ops.hue(all_colours, hue), np.asarray(F.adjust_hue(_pil(all_colours), hue)))


@needs_numba
def test_grayscale_saturation_brightness_contrast_on_every_colour(all_colours):
    img = _pil(all_colours)
    assert np.array_equal(fast_ops.grayscale(all_colours), np.asarray(F.rgb_to_grayscale(img, 3)))
    for f in (0.6, 0.83, 1.0, 1.17, 1.4):
        assert np.array_equal(fast_ops.saturation(all_colours, f), np.asarray(F.adjust_saturation(img, f))), f
        assert np.array_equal(fast_ops.brightness(all_colours, f), np.asarray(F.adjust_brightness(img, f))), f
        assert np.array_equal(fast_ops.contrast(all_colours, f), np.asarray(F.adjust_contrast(img, f))), f


@needs_numba
def test_blends_on_photos_for_random_factors(photos):
    rng = random.Random(0)
    for k in range(60):
        a = photos[k % len(photos)][::3, ::3]
        f = rng.uniform(0.0, 2.0)
        img = _pil(a)
        assert np.array_equal(fast_ops.brightness(a, f), np.asarray(F.adjust_brightness(img, f))), f
        assert np.array_equal(fast_ops.contrast(a, f), np.asarray(F.adjust_contrast(img, f))), f
        assert np.array_equal(fast_ops.saturation(a, f), np.asarray(F.adjust_saturation(img, f))), f


@needs_numba
@pytest.mark.parametrize("size", [(224, 224), (96, 96), (61, 47), (5, 9)])
def test_gaussian_blur_matches_pil(photos, size):
    rng = random.Random(size[0])
    sigmas = [0.1, 2.0, 1.4142, 1.4143, 1.0] + [rng.uniform(0.1, 2.0) for _ in range(60)]
    for k, s in enumerate(sigmas):
        a = np.asarray(_pil(photos[k % len(photos)]).resize(size))
        ref = np.asarray(_pil(a).filter(ImageFilter.GaussianBlur(radius=s)))
        assert np.array_equal(fast_ops.gaussian_blur(a, s), ref), (size, s)


def test_box_radius_covers_the_blur_range():
    assert fast_ops.box_blur_params(0.1)[0] == 0 and fast_ops.box_blur_params(2.0)[0] == 1


@pytest.mark.parametrize("flip", [False, True])
def test_normalized_tensor_matches_totensor_normalize(photos, flip):
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    step = fv.ToNormalizedTensor()
    for a in photos[:4]:
        got = step(a[:, ::-1] if flip else a)
        ref = norm(F.hflip(_pil(a)) if flip else _pil(a))
        assert got.dtype == torch.float32 and got.equal(ref)


def test_resized_crop_step_equals_torchvision_resized_crop(photos):
    for k in range(40):
        img = _pil(photos[k % len(photos)])
        step = fv.ResizedCrop((224, 192, 96)[k % 3], ((0.2, 1.0), (0.086, 0.429))[k % 2])
        random.seed(k)
        got = step(img)
        random.seed(k)
        top, left, h, w = fv.crop_box(img.width, img.height, step.scale, step.ratio)
        assert np.array_equal(got, np.asarray(F.resized_crop(img, top, left, h, w, list(step.size))))


def _replay(view: fv.View, img: Image.Image, seed: int) -> torch.Tensor:
    """The same python-random draws as `view`, applied with torchvision/PIL ops in the 2021 order."""
    random.seed(seed)
    np.random.seed(seed)
    steps = {type(t): t for t in view.transforms}
    crop = steps[fv.ResizedCrop]
    top, left, h, w = fv.crop_box(img.width, img.height, crop.scale, crop.ratio)
    img = F.resized_crop(img, top, left, h, w, list(crop.size))
    drawn = steps[fv.ColorJitter].draw()
    if drawn is not None:
        order, (b, c, s, hue) = drawn
        fns = [lambda x: F.adjust_brightness(x, b), lambda x: F.adjust_contrast(x, c),
               lambda x: F.adjust_saturation(x, s), lambda x: F.adjust_hue(x, hue)]
        for i in order:
            img = fns[i](img)
    if random.random() < steps[fv.Grayscale].p:
        img = F.rgb_to_grayscale(img, 3)
    if random.random() < steps[fv.Blur].p:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*steps[fv.Blur].sigma)))
    if random.random() < steps[fv.HorizontalFlip].p:
        img = F.hflip(img)
    if RandAugment in steps:
        for op, v in steps[RandAugment].draw():
            img = op(img, v)
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(img))


@pytest.mark.parametrize("kind", ["weak224", "weak96", "strong224", "strong96"])
def test_views_equal_torchvision_ops_on_the_same_draws(photos, kind):
    size = int(kind[-3:] if kind[-3:].isdigit() else kind[-2:])
    view = fv.strong_view(size, (0.2, 1.0), 5) if kind.startswith("strong") else fv.weak_view(size, (0.2, 1.0))
    for seed in range(24):
        img = _pil(photos[seed % len(photos)])
        random.seed(seed)
        np.random.seed(seed)
        got = view(img)
        assert got.equal(_replay(view, img, seed)), (kind, seed)


def test_numba_and_pil_fallback_give_identical_views(photos, monkeypatch):
    view = fv.strong_view(128, (0.1, 1.0), 5)
    outs = []
    for have in (True, False):
        monkeypatch.setattr(fast_ops, "HAVE_NUMBA", have and fast_ops.HAVE_NUMBA)
        random.seed(3)
        np.random.seed(3)
        outs.append([view(_pil(p)) for p in photos])
    assert all(a.equal(b) for a, b in zip(*outs, strict=True))
