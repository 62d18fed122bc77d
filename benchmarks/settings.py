"""The README's two view settings (clsa-reference.md §1) and a custom one built from flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class Setting:
    name: str
    size_crops: list[int]
    min_scale_crops: list[float]
    max_scale_crops: list[float]
    pick_weak: list[int]
    pick_strong: list[int]
    nmb_crops: list[int] = field(default_factory=list)
    aug_times: int = 5

    def __post_init__(self) -> None:
        self.nmb_crops = self.nmb_crops or [1] * len(self.size_crops)

    def crops(self):
        from data_processing.view_plan import expand_crops
        return expand_crops(self.nmb_crops, self.size_crops, self.min_scale_crops, self.max_scale_crops)

    def plan(self, aug_times: int | None = None):
        """The setting's ViewPlan (data_processing/view_plan.py)."""
        from data_processing.view_plan import ViewPlan
        return ViewPlan.build(self.crops(), self.pick_weak, self.pick_strong,
                              self.aug_times if aug_times is None else aug_times)

    def transform(self, backend: str = "fast"):
        """The project's MultiViewTransform for this setting."""
        from data_processing.transforms import MultiViewTransform
        return MultiViewTransform(self.plan(), backend=backend)

    def reference(self):
        """The 2021 transform (every crop's weak and strong view)."""
        from benchmarks.reference_views import ReferenceMultiCrop
        return ReferenceMultiCrop(self.size_crops, self.nmb_crops, self.min_scale_crops, self.max_scale_crops,
                                  self.aug_times, init_size=self.size_crops[0])

    def view_sizes(self) -> list[int]:
        """Sizes of the views the step consumes: key, picked weak, picked strong."""
        return self.plan().sizes()


SINGLE = Setting("single", [224, 96], [0.2, 0.086], [1.0, 0.429], pick_weak=[0], pick_strong=[1])
MULTI = Setting("multi", [224, 192, 160, 128, 96], [0.2, 0.172, 0.143, 0.114, 0.086], [1.0, 0.86, 0.715, 0.571, 0.429],
                pick_weak=[0, 1, 2, 3, 4], pick_strong=[0, 1, 2, 3, 4])

SINGLE96 = Setting("single96", [96, 96], [0.2, 0.086], [1.0, 0.429], pick_weak=[0], pick_strong=[1])
SETTINGS = {s.name: s for s in (SINGLE, MULTI, SINGLE96)}


def add_setting_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setting", choices=tuple(SETTINGS) + ("custom",), default="single",
                   help="README single-crop (key 224, weak 224, strong 96), multi-crop (5 sizes, all picked), "
                        "single96 (the single-crop structure with every view at 96 px); custom: --size_crops "
                        "--min_scale_crops --max_scale_crops --pick_weak --pick_strong")
    p.add_argument("--aug_times", type=int, default=5, help="RandAugment ops per strong view")
    p.add_argument("--size_crops", type=int, nargs="+", default=None)
    p.add_argument("--min_scale_crops", type=float, nargs="+", default=None)
    p.add_argument("--max_scale_crops", type=float, nargs="+", default=None)
    p.add_argument("--pick_weak", type=int, nargs="+", default=None)
    p.add_argument("--pick_strong", type=int, nargs="+", default=None)


def setting_from_args(args: argparse.Namespace) -> Setting:
    if args.setting == "custom":
        sizes = args.size_crops or [96]
        n = len(sizes)
        s = Setting("custom", sizes, args.min_scale_crops or [0.2] * n, args.max_scale_crops or [1.0] * n,
                    pick_weak=args.pick_weak if args.pick_weak is not None else [0],
                    pick_strong=args.pick_strong if args.pick_strong is not None else [n - 1])
    else:
        base = SETTINGS[args.setting]
        s = Setting(base.name, list(base.size_crops), list(base.min_scale_crops), list(base.max_scale_crops),
                    list(base.pick_weak), list(base.pick_strong))
    s.aug_times = args.aug_times
    return s
