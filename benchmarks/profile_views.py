#!/usr/bin/env python3
"""Where the view pipeline spends its time: median milliseconds per call of every op, PIL/torchvision (the 2021
implementation) vs data_processing.fast_ops, at each output size, on the benchmark photos, one thread.

    python3 benchmarks/profile_views.py --sizes 224 96 --json
"""

from __future__ import annotations

import argparse
import random
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.photos import decode, photo_bytes  # noqa: E402


def _median_ms(fn, inputs: list, calls: int) -> float:
    times = []
    for i in range(calls):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000.0 * common.median(times)


def ops_table(size: int, photos: list, calls: int) -> list[tuple[str, float, float]]:
    """(op, PIL ms, fast ms) at output `size`."""
    import numpy as np
    from PIL import ImageFilter
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    from data_processing import fast_ops
    from data_processing import fast_views as fv
    from data_processing.randaugment import RandAugment
    from data_processing.view_plan import IMAGENET_MEAN, IMAGENET_STD
    crop_tv = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    crop_fast = fv.ResizedCrop(size, (0.2, 1.0))
    random.seed(0)
    pils = [crop_tv(p) for p in photos]
    arrs = [np.asarray(p) for p in pils]
    jitter_tv, jitter_fast = T.ColorJitter(0.4, 0.4, 0.4, 0.1), fv.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)
    norm_tv = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    norm_fast = fv.ToNormalizedTensor()
    ra = RandAugment(5, 10)
    rows = [
        ("random resized crop", (crop_tv, photos), (crop_fast, photos)),
        ("colour jitter (all four)", (jitter_tv, pils), (jitter_fast, arrs)),
        ("  brightness", (lambda x: F.adjust_brightness(x, 1.2), pils), (lambda x: fast_ops.brightness(x, 1.2), arrs)),
        ("  contrast", (lambda x: F.adjust_contrast(x, 1.2), pils), (lambda x: fast_ops.contrast(x, 1.2), arrs)),
        ("  saturation", (lambda x: F.adjust_saturation(x, 1.2), pils), (lambda x: fast_ops.saturation(x, 1.2), arrs)),
        ("  hue", (lambda x: F.adjust_hue(x, 0.05), pils), (lambda x: fast_ops.hue(x, 0.05), arrs)),
        ("grayscale", (lambda x: F.rgb_to_grayscale(x, 3), pils), (fast_ops.grayscale, arrs)),
        ("gaussian blur", (lambda x: x.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0))), pils),
         (lambda x: fast_ops.gaussian_blur(x, random.uniform(0.1, 2.0)), arrs)),
        ("horizontal flip", (F.hflip, pils), (lambda x: x[:, ::-1], arrs)),
        ("RandAugment(5, 10)", (ra, pils), (ra, arrs)),
        ("ToTensor + Normalize", (norm_tv, pils), (norm_fast, arrs)),
    ]
    return [(name, _median_ms(f_ref, x_ref, calls), _median_ms(f_fast, x_fast, calls))
            for name, (f_ref, x_ref), (f_fast, x_fast) in rows]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    p.add_argument("--calls", type=int, default=200, help="calls per op (median reported)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import torch

    from data_processing import fast_ops
    torch.set_num_threads(1)
    fast_ops.warmup()
    data = photo_bytes()
    photos = [decode(b) for b in data]
    res = {"benchmark": "profile_views", "machine": common.machine(), "numba": fast_ops.HAVE_NUMBA,
           "decode_ms": _median_ms(decode, data, args.calls), "ops": {}}
    print(f"per-call median ms, 1 thread, {len(data)} photos 500x375 ({res['machine']['cpu']}); "
          f"JPEG decode {res['decode_ms']:.2f} ms")
    for size in args.sizes:
        table = ops_table(size, photos, args.calls)
        res["ops"][str(size)] = {name: {"pil_ms": a, "fast_ms": b} for name, a, b in table}
        print(f"\noutput {size} px")
        common.print_table(["op", "PIL/torchvision ms", "fast ms", "x faster"],
                           [[name, a, b, a / b if b > 0 else float("nan")] for name, a, b in table])
    if args.json:
        common.print_json(res)
    return res


if __name__ == "__main__":
    main()
