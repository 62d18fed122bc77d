#!/usr/bin/env python3
"""Loader vs model balance: images/s of the real DataLoader (ImageFolder of JPEGs -> MultiViewTransform -> batches)
with N workers, against the training step's images/s, and whether N workers can feed the step.

The loader is built like main_clsa.build_loader (persistent workers, prefetch_factor 4, seeded workers); its rate
is measured after the first batch (worker start-up is reported apart). The step rate is measured with
bench_step's runner (the project's step, `--step_mode`), or given with --step_img_per_s.

    python3 benchmarks/bench_loader.py --json
    python3 benchmarks/bench_loader.py --setting multi --workers 1 2 --arch resnet50 --step_mode amp+channels_last
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

from benchmarks.photos import image_folder  # noqa: E402
from benchmarks.settings import add_setting_args, setting_from_args  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p)
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1], help="worker counts to time")
    p.add_argument("--backend", choices=("fast", "torchvision"), default="fast", help="MultiViewTransform backend")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=256, help="JPEGs in the temporary image folder")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of loading per worker count")
    p.add_argument("--arch", default="resnet18", help="model for the step rate")
    p.add_argument("--step_mode", default="default", help="bench_step mode for the step rate")
    p.add_argument("--step_img_per_s", type=float, default=None, help="use this step rate instead of measuring")
    p.add_argument("--steps", type=int, default=2, help="timed steps for the step rate")
    p.add_argument("--moco_k", type=int, default=65536)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the step (0: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def build_loader(root: str, setting, workers: int, batch: int, backend: str, pin: bool):
    """The loader main_clsa.build_loader makes, on one process (RandomSampler instead of DistributedSampler)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from ops.environment import seed_worker
    dataset = ImageFolder(os.path.join(root, "train"), transform=setting.transform(backend=backend))
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      pin_memory=pin, worker_init_fn=seed_worker, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, generator=torch.Generator().manual_seed(0))


def loader_rate(loader, batch: int, seconds: float) -> dict:
    """Images/s after the first batch; the first batch's latency is the start-up."""
    t0 = time.perf_counter()
    it = iter(loader)
    images, startup = 0, None
    start = None
    while True:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if startup is None:
            startup = time.perf_counter() - t0
            start = time.perf_counter()
            continue
        images += batch
        if time.perf_counter() - start >= seconds:
            break
    return {"img_per_s": images / (time.perf_counter() - start), "startup_s": startup}


def step_rate(args: argparse.Namespace, setting) -> float:
    import torch

    from benchmarks.bench_step import Runner, make_views
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    views, num_weak = make_views(setting, args.batch, 0)
    ns = argparse.Namespace(arch=args.arch, moco_dim=128, moco_k=args.moco_k, device=args.device, seed=0)
    runner = Runner(args.step_mode, ns, [v.to(args.device) for v in views], num_weak)
    runner.step(False)
    for _ in range(args.steps):
        runner.step(True)
    return args.batch / common.median(runner.times)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch
    setting = setting_from_args(args)
    res = {"benchmark": "loader", "setting": setting.name, "backend": args.backend, "batch": args.batch,
           "machine": common.machine(), "loader": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = image_folder(tmp, args.images)
        for n in args.workers:
            loader = build_loader(root, setting, n, args.batch, args.backend, args.device == "cuda")
            res["loader"][str(n)] = loader_rate(loader, args.batch, args.seconds)
            del loader
    if args.step_img_per_s is not None:
        res["step_img_per_s"], res["step_source"] = args.step_img_per_s, "given"
    else:
        res["step_img_per_s"], res["step_source"] = step_rate(args, setting), f"{args.arch} {args.step_mode}"
    if args.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    rows = []
    for n, r in res["loader"].items():
        r["feeds_step"] = r["img_per_s"] >= res["step_img_per_s"]
        per_worker = r["img_per_s"] / max(int(n), 1)
        r["workers_needed"] = math.ceil(res["step_img_per_s"] / per_worker) if per_worker > 0 else None
        rows.append([n, r["img_per_s"], r["startup_s"], res["step_img_per_s"], "yes" if r["feeds_step"] else "no",
                     r["workers_needed"]])
    print(f"loader vs step: setting {setting.name}, backend {args.backend}, batch {args.batch}, {args.device} "
          f"({res.get('gpu') or res['machine']['cpu']}, {res['machine']['cores']} cores); step = "
          f"{res['step_source']}. Loader and step are timed apart; in training they share the cores.")
    common.print_table(["workers", "loader img/s", "start-up s", "step img/s", "feeds step", "workers needed"], rows)
    if args.json:
        common.print_json(res)
    return res


if __name__ == "__main__":
    main()
