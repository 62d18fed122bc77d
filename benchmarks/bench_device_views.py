#!/usr/bin/env python3
"""`--views gpu` against `--views cpu`, on ImageNet-like JPEGs (benchmarks/photos.py, 500 x 375, quality 90):

  (a) views/s of `BatchViews` (decode included) on this process's device(s) against the CPU pipeline per core;
  (b) host CPU-seconds per image that the loader workers spend: `--views cpu` decodes and builds every view in the
      worker, `--views gpu` only reads the file's bytes. Measured as what one worker does, in this process with one
      thread: `time.process_time()` around dataset[i] of the dataset main_clsa.py builds, collate included.

    python3 benchmarks/bench_device_views.py --setting single --json
    python3 benchmarks/bench_device_views.py --setting multi --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common  # type: ignore[no-redef]

import torch  # noqa: E402

from benchmarks.photos import photo_bytes  # noqa: E402
from benchmarks.settings import add_setting_args, setting_from_args  # noqa: E402
from data_processing.device_views import DeviceViews, EncodedImages, collate_encoded, read_file_bytes  # noqa: E402
from data_processing.gpu_views import BatchViews  # noqa: E402
from data_processing.sampling import RobustViews  # noqa: E402


def photo_folder(root: str, copies: int) -> str:
    """<root>/train/photos/<i>.jpg: the 10 photos, `copies` times each."""
    folder = os.path.join(root, "train", "photos")
    os.makedirs(folder, exist_ok=True)
    for k in range(copies):
        for i, data in enumerate(photo_bytes()):
            with open(os.path.join(folder, f"{k:03d}_{i}.jpg"), "wb") as f:
                f.write(data)
    return root


def worker_cpu_seconds(dataset, collate, n: int) -> float:
    """CPU seconds per image of dataset[(0, i)] + collate over n images (what a loader worker does)."""
    start = time.process_time()
    batch = [dataset[(0, i % len(dataset))] for i in range(n)]
    collate(batch)
    return (time.process_time() - start) / n


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p)
    p.add_argument("--device", default="cpu", help="device of BatchViews for (a): cpu or cuda")
    p.add_argument("--batch", type=int, default=32, help="images per BatchViews call")
    p.add_argument("--images", type=int, default=64, help="images per worker measurement in (b)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per mode in (a)")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    setting = setting_from_args(args)
    from torch.utils.data import default_collate
    from torchvision.datasets import ImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        root = photo_folder(tmp, max(1, args.images // 10))
        cpu_views = setting.transform()
        cpu_ds = RobustViews(ImageFolder(os.path.join(root, "train"), transform=cpu_views), seed=0)
        gpu_ds = RobustViews(EncodedImages(ImageFolder(os.path.join(root, "train"), loader=read_file_bytes)), seed=0)
        worker_cpu = worker_cpu_seconds(cpu_ds, default_collate, args.images)
        worker_gpu = worker_cpu_seconds(gpu_ds, collate_encoded, args.images)

        device = torch.device(args.device)
        views = DeviceViews(BatchViews(setting.plan(args.aug_times)), device, seed=0, rank=0)
        batch = collate_encoded([gpu_ds[(0, i % len(gpu_ds))] for i in range(args.batch)])[0]

        def device_call(i: int) -> int:
            out, _ = views(batch, 0, i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return len(out[0])

        device_call(0)  # warm-up (CUDA context, nvJPEG handles)
        device_rate = common.rate(device_call, args.seconds)
        cpu_rate = common.rate(lambda i: (cpu_ds[(0, i % len(cpu_ds))], 1)[1], args.seconds)

    result = {"setting": setting.name, "views": setting.view_sizes(), "machine": common.machine(),
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else common.cpu_model(),
              "a_batchviews_img_per_s": device_rate, "a_cpu_pipeline_img_per_s_per_core": cpu_rate,
              "b_worker_cpu_s_per_img_cpu_views": worker_cpu, "b_worker_cpu_s_per_img_gpu_views": worker_gpu,
              "b_ratio_gpu_over_cpu": worker_gpu / worker_cpu}
    print(f"setting {setting.name} (views {setting.view_sizes()}), BatchViews on {result['device']}")
    print(f"(a) BatchViews, batch {args.batch}, decode included: {device_rate:.1f} img/s; CPU pipeline: "
          f"{cpu_rate:.1f} img/s per core")
    print(f"(b) loader CPU seconds per image: --views cpu {worker_cpu * 1e3:.2f} ms, --views gpu "
          f"{worker_gpu * 1e3:.3f} ms ({result['b_ratio_gpu_over_cpu']:.4f} of cpu)")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
