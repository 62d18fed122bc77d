"""Views: the lists the README commands produce, and every RandAugment op on a real photo."""

import random

import numpy as np
import pytest
import torch
from conftest import readme_command
from PIL import Image

from data_processing import randaugment as ra
from data_processing.transforms import MultiViewTransform
from data_processing.view_plan import ViewPlan, expand_crops
from ops.argparser import parse_args


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((160, 160))  # a real 512 x 512 RGB photo, scaled down


def _transform(argv):
    a = parse_args(argv)
    crops = expand_crops(a.nmb_crops, a.size_crops, a.min_scale_crops, a.max_scale_crops)
    return MultiViewTransform(ViewPlan.build(crops, a.pick_weak, a.pick_strong, a.aug_times))


@pytest.mark.parametrize("kind,expected", [
    ("single", [224, 224, 96]),
    ("multi", [224, 224, 192, 160, 128, 96, 224, 192, 160, 128, 96]),
])
def test_readme_view_lists(kind, expected, photo):
    t = _transform(readme_command(kind, 0, "/data"))
    assert t.plan.sizes() == expected
    views = t(photo)
    assert [tuple(v.shape) for v in views] == [(3, s, s) for s in expected]
    assert all(v.dtype == torch.float32 for v in views)
    n_weak = (len(expected) - 1) // 2
    assert t.plan.num_weak == n_weak and t.plan.num_strong == n_weak
    # the key view uses the first crop setting; strong views carry RandAugment, weak ones do not
    assert t.key.transforms[0].size == (224, 224) and t.key.transforms[0].scale == (0.2, 1.0)
    assert not any(isinstance(s, ra.RandAugment) for s in t.weak[0].transforms)
    assert any(isinstance(s, ra.RandAugment) for s in t.strong[0].transforms)


def test_picks_are_a_sorted_set_and_nmb_crops_expand():
    a = parse_args(["--nmb_crops", "2", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2", "0.1",
                    "--max_scale_crops", "1", "0.5", "--pick_weak", "2", "0", "0", "--pick_strong", "1"])
    crops = expand_crops(a.nmb_crops, a.size_crops, a.min_scale_crops, a.max_scale_crops)
    assert [c.size for c in crops] == [32, 32, 16]
    t = MultiViewTransform(ViewPlan.build(crops, a.pick_weak, a.pick_strong, a.aug_times))
    assert t.plan.sizes() == [32, 32, 16, 32]


def test_weak_and_strong_views_are_independent_crops(photo):
    t = _transform(readme_command("single", 0, "/data") + ["--pick_strong", "0"])
    random.seed(0)
    torch.manual_seed(0)
    key, weak, strong = t(photo)
    assert not torch.allclose(key, weak) and not torch.allclose(weak, strong)


@pytest.mark.parametrize("op", ra.FIXMATCH_POOL, ids=lambda f: f.__name__)
def test_each_randaugment_op_on_a_real_photo(op, photo):
    photo = photo.point(lambda x: 60 + x // 2)  # lower contrast, so auto_contrast and equalize have work to do
    random.seed(0)
    strongest_at_1 = (ra.posterize, ra.brightness, ra.color, ra.contrast, ra.sharpness)  # 4 bits / factor 0.14
    out = op(photo, 1 if op in strongest_at_1 else 9)
    assert out.size == photo.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(photo, np.int16)).mean()
    if op is ra.identity:
        assert diff == 0
    else:
        assert diff > 0.5, f"{op.__name__} at magnitude 9 barely changed the photo"


def test_randaugment_parameters_follow_the_2021_table():
    assert [ra._int(v, 4, 4) for v in range(1, 10)] == [4, 4, 5, 5, 6, 6, 6, 7, 7]  # posterize bits
    assert [256 - ra._int(v, 256) for v in range(1, 10)] == [231, 205, 180, 154, 128, 103, 77, 52, 26]
    assert ra._float(1, 0.9, 0.05) == pytest.approx(0.14) and ra._float(9, 0.9, 0.05) == pytest.approx(0.86)
    assert len(ra.FIXMATCH_POOL) == 14


def test_randaugment_draws(monkeypatch, photo):
    """n ops with replacement, magnitudes in 1..9, each applied with probability 0.5."""
    calls, mags = [], []

    def spy(img, v):
        calls.append(v)
        return img

    def record(low, high):
        v = np.random.RandomState(len(mags)).randint(low, high)
        mags.append(v)
        return v

    monkeypatch.setattr(np.random, "randint", record)
    aug = ra.RandAugment(5, 10, pool=(spy,))
    random.seed(0)
    for _ in range(400):
        aug(photo)
    assert len(mags) == 2000 and min(mags) == 1 and max(mags) == 9
    assert 0.45 < len(calls) / 2000 < 0.55


@pytest.mark.parametrize("backend", ["fast", "torchvision", "batch"])
def test_aug_times_0_strong_view_is_exactly_the_weak_pipeline(backend, photo):
    """--aug_times 0 (the ablation arms clsa_aug0 / smallcrop_infonce): a "strong" 16-px view is the weak 16-px view,
    bit for bit, drawing the same random numbers (so also every later view is the same)."""
    from data_processing.gpu_views import BatchViews
    crops = expand_crops([1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429])

    def views(pick_weak, pick_strong, aug_times):
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        if backend == "batch":
            image = torch.from_numpy(np.array(photo)).permute(2, 0, 1).contiguous()
            return BatchViews(ViewPlan.build(crops, pick_weak, pick_strong, aug_times))([image, image.flip(-1)],
                                                                        torch.Generator().manual_seed(0))
        t = MultiViewTransform(ViewPlan.build(crops, pick_weak, pick_strong, aug_times), backend=backend)
        return [v for _ in range(3) for v in t(photo)]  # 3 images: the RNG stream after the views matters too

    as_weak, as_strong = views([0, 1], [], 0), views([0], [1], 0)
    assert len(as_weak) == len(as_strong)
    for a, b in zip(as_weak, as_strong, strict=True):
        assert torch.equal(a, b)
    with_ra = views([0], [1], 5)
    assert not all(torch.equal(a, b) for a, b in zip(as_weak, with_ra, strict=True))
