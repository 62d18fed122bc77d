"""The view plan: the one owner of which views an image yields, in which order, at which sizes.

    plan = ViewPlan.build(expand_crops(nmb, sizes, min_scales, max_scales), pick_weak, pick_strong, aug_times)
    views = [key, weak_a for a in plan.pick_weak, strong_b for b in plan.pick_strong]     # plan.sizes()
    key, weak, strong = plan.split(views)

The key view uses crop setting 0. Picks index the flattened crop list and are a sorted set (duplicates count
once). With `strong=False` (alpha 0: MoCo v2) no strong view is planned at all. The view builders
(`transforms.MultiViewTransform`, `gpu_views.BatchViews`) and the training loop (`clsa.engine`, through `split`)
read the layout from here; nothing else computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropSetting:
    size: int
    scale: tuple[float, float]


def expand_crops(nmb_crops: Sequence[int], size_crops: Sequence[int], min_scale_crops: Sequence[float],
                 max_scale_crops: Sequence[float]) -> list[CropSetting]:
    """The flattened crop list: setting i repeated nmb_crops[i] times, in order."""
    out = []
    for count, size, lo, hi in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops, strict=True):
        out += [CropSetting(size, (lo, hi))] * count
    return out


class PlanError(ValueError):
    """A pick that names no crop; `kind` is "weak" or "strong", `picks` the offending indices."""

    def __init__(self, kind: str, picks: list[int], n_crops: int) -> None:
        super().__init__(f"{kind} picks {picks} name no crop (valid: 0..{n_crops - 1})")
        self.kind, self.picks, self.n_crops = kind, picks, n_crops


@dataclass(frozen=True)
class ViewPlan:
    """Crops, the sorted unique picks, RandAugment's op count and the normalisation of every view."""
    crops: tuple[CropSetting, ...]
    pick_weak: tuple[int, ...]
    pick_strong: tuple[int, ...]
    aug_times: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def build(cls, crops: Sequence[CropSetting], pick_weak: Sequence[int], pick_strong: Sequence[int],
              aug_times: int, strong: bool = True) -> ViewPlan:
        """Sort and de-duplicate the picks; `strong` False plans no strong view. Raises PlanError for a pick out
        of range, ValueError for no weak view."""
        for kind, picks in (("weak", pick_weak), ("strong", pick_strong)):
            bad = sorted({p for p in picks if not 0 <= p < len(crops)})
            if bad:
                raise PlanError(kind, bad, len(crops))
        if not pick_weak:
            raise ValueError("at least one weak view is needed")
        return cls(tuple(crops), tuple(sorted(set(pick_weak))),
                   tuple(sorted(set(pick_strong))) if strong else (), aug_times)

    @property
    def num_weak(self) -> int:
        return len(self.pick_weak)

    @property
    def num_strong(self) -> int:
        return len(self.pick_strong)

    def view_crops(self) -> list[tuple[CropSetting, bool]]:
        """(crop setting, strong?) of every view, in order: key, weak..., strong..."""
        return ([(self.crops[0], False)] + [(self.crops[i], False) for i in self.pick_weak]
                + [(self.crops[i], True) for i in self.pick_strong])

    def sizes(self) -> list[int]:
        """Output size of every view, in order."""
        return [c.size for c, _ in self.view_crops()]

    def split(self, views: Sequence) -> tuple:
        """[key, weak..., strong...] -> (key, [weak...], [strong...])."""
        w = self.num_weak
        return views[0], list(views[1:1 + w]), list(views[1 + w:])

    def describe(self) -> str:
        sizes = self.sizes()
        return f"key {sizes[0]}px, weak {sizes[1:1 + self.num_weak]}, strong {sizes[1 + self.num_weak:]}"
