#!/usr/bin/env python3
"""One short prepared check for a CUDA machine (about 3-5 minutes on an H100):

  1. ResNet-50 training step, single-crop and multi-crop settings, batch 64: the 2021-style fp32 baseline, the
     project's step in fp32 (default flags) and with --amp --channels_last; images/s, peak CUDA memory, loss;
  2. the real DataLoader over the real MultiViewTransform with all of the machine's cores as workers, for both
     settings, against those step rates.
Prints the card (torch.cuda.get_device_name) and one table; the last line is one JSON object (also written to
--out, default $OUT/gpu_check.json when $OUT is set).

    python3 benchmarks/gpu_check.py                 # on the GPU machine
    python3 benchmarks/gpu_check.py --dry-run       # seconds on CPU: resnet18, batch 4, tiny queue (for tests)
"""

from __future__ import annotations

import argparse
import json
import os
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks import bench_loader, bench_step  # noqa: E402

TINY_SETTING = ["--setting", "custom", "--size_crops", "32", "24", "--min_scale_crops", "0.2", "0.1",
                "--max_scale_crops", "1", "0.5", "--pick_weak", "0", "--pick_strong", "1"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="tiny CPU run (resnet18, batch 4)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda, or cpu with --dry-run")
    p.add_argument("--arch", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch
    dry = args.dry_run
    device = args.device or ("cpu" if dry else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (use --dry-run for a CPU smoke run)")
    arch = args.arch or ("resnet18" if dry else "resnet50")
    batch = args.batch or (4 if dry else 64)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name(0) if device == "cuda" else common.cpu_model()
    cores = os.cpu_count() or 1
    print(f"gpu_check: {card}; {cores} CPU cores; torch {torch.__version__}; {arch}, batch {batch}", flush=True)
    common_step = ["--arch", arch, "--batch", str(batch), "--device", device,
                   "--modes", "baseline", "default", "amp+channels_last"]
    if dry:
        common_step += ["--no_memory", "--moco_k", "64", "--steps", "1", "--warmup", "1", *TINY_SETTING]
    else:
        common_step += ["--steps", "5", "--warmup", "2"]
    t0 = time.time()
    steps, loaders = {}, {}
    for setting in (["single"] if dry else ["single", "multi"]):
        argv_s = common_step + ([] if dry else ["--setting", setting])
        steps[setting] = bench_step.main(argv_s)
        rate = steps[setting]["modes"]["amp+channels_last"]["img_per_s"]
        loader_argv = ["--workers", str(cores), "--batch", str(batch), "--step_img_per_s", str(rate),
                       "--seconds", "1" if dry else "20", "--images", "16" if dry else "512"]
        loader_argv += TINY_SETTING if dry else ["--setting", setting]
        loaders[setting] = bench_loader.main(loader_argv)
    rows = []
    for setting, r in steps.items():
        m = r["modes"]
        load = loaders[setting]["loader"][str(cores)]["img_per_s"]
        mem = "peak_cuda_mb" if device == "cuda" else "peak_rss_mb"
        rows.append([setting, m["baseline"]["img_per_s"], m["default"]["img_per_s"],
                     m["amp+channels_last"]["img_per_s"], m["amp+channels_last"]["x_baseline"],
                     f"{m['default'].get(mem, float('nan')):.0f}/{m['amp+channels_last'].get(mem, float('nan')):.0f}",
                     f"{m['amp+channels_last']['loss_rel_diff']:.1e}", load,
                     "yes" if load >= m["amp+channels_last"]["img_per_s"] else "no"])
    print(f"\n== {card}: {arch} batch {batch}, {cores}-core loader ({time.time() - t0:.0f} s in all) ==")
    common.print_table(["setting", "baseline img/s", "fp32 img/s", "amp+cl img/s", "amp+cl x base",
                        "peak MB fp32/amp+cl", "loss rel diff", f"loader({cores}w) img/s", "loader feeds"], rows)
    res = {"benchmark": "gpu_check", "card": card, "device": device, "cores": cores, "arch": arch, "batch": batch,
           "dry_run": dry, "steps": steps, "loaders": loaders, "seconds": time.time() - t0}
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    common.print_json(res)
    return res


if __name__ == "__main__":
    main()
