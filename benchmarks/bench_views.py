#!/usr/bin/env python3
"""View-pipeline throughput, decode included: JPEG bytes in memory -> the list of view tensors, one core.

Modes, interleaved in one process on one thread (torch.set_num_threads(1)) so background load hits them alike:
  reference    the 2021 pipeline (benchmarks/reference_views.py): every crop's weak AND strong view, torchvision
               Compose on PIL images (5 views per image single-crop, 11 multi-crop)
  torchvision  this project's MultiViewTransform, backend "torchvision": only the picked views, same PIL ops
  fast         this project's MultiViewTransform, default backend "fast" (uint8 arrays, compiled pixel ops)
Images/s of one process on one thread = images/s per core. The photos are scikit-image's bundled pictures saved as
500 x 375 JPEGs at quality 90 (benchmarks/photos.py).

    python3 benchmarks/bench_views.py --setting single --json
    python3 benchmarks/bench_views.py --setting multi --seconds 3 --repeats 5
    python3 benchmarks/bench_views.py --reference          # the 2021 pipeline alone
"""

from __future__ import annotations

import argparse

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.photos import decode, photo_bytes  # noqa: E402
from benchmarks.settings import add_setting_args, setting_from_args  # noqa: E402

MODES = ("reference", "torchvision", "fast")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to time (interleaved)")
    p.add_argument("--reference", action="store_true", help="time only the 2021 reference pipeline")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per mode per repeat")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all modes; the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def build_modes(setting, modes: list[str]) -> dict:
    """name -> (callable image -> views, views produced per image)."""
    out = {}
    for m in modes:
        if m == "reference":
            t = setting.reference()
            out[m] = (t, len(t.trans))
        else:
            t = setting.transform(backend=m)
            out[m] = (t, 1 + t.plan.num_weak + t.plan.num_strong)
    return out


def _timed_call(transform, data: list[bytes]):
    def one(i: int) -> int:
        transform(decode(data[i % len(data)]))
        return 1
    return one


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch

    from data_processing import fast_ops
    torch.set_num_threads(1)
    setting = setting_from_args(args)
    modes = ["reference"] if args.reference else list(dict.fromkeys(args.modes))
    fast_ops.warmup()
    data = photo_bytes()
    built = build_modes(setting, modes)
    fns = {}
    for name, (t, _) in built.items():
        for b in data:  # warm caches, numba dispatch and PIL paths once per photo
            t(decode(b))
        fns[name] = _timed_call(t, data)
    rates = common.interleaved_rates(fns, args.seconds, args.repeats, min_calls=len(data))
    result = {"benchmark": "views", "setting": setting.name, "sizes": setting.size_crops,
              "pick_weak": setting.pick_weak, "pick_strong": setting.pick_strong, "aug_times": setting.aug_times,
              "threads": 1, "numba": fast_ops.HAVE_NUMBA, "machine": common.machine(), "modes": {}}
    rows = []
    for name in modes:
        med = common.median(rates[name])
        result["modes"][name] = {"img_per_s_per_core": med, "runs": rates[name], "views_per_image": built[name][1],
                                 "spread": common.spread(rates[name])}
        ratio = med / common.median(rates["reference"]) if "reference" in rates else float("nan")
        rows.append([name, built[name][1], med, 1000.0 / med, ratio, f"{100 * common.spread(rates[name]):.0f}%"])
    if "reference" in rates and "fast" in rates:
        result["ratio_fast_vs_reference"] = result["modes"]["fast"]["img_per_s_per_core"] / \
            result["modes"]["reference"]["img_per_s_per_core"]
    print(f"view pipeline, setting {setting.name} (sizes {setting.size_crops}, weak {setting.pick_weak}, strong "
          f"{setting.pick_strong}), 1 thread, decode included, {len(data)} photos 500x375; median of "
          f"{args.repeats} x {args.seconds:g} s; {result['machine']['cpu']}")
    common.print_table(["mode", "views/img", "img/s/core", "ms/img", "x reference", "spread"], rows)
    if args.json:
        common.print_json(result)
    return result


if __name__ == "__main__":
    main()
